"""The main scheduler daemon: pops the shared task heap and dispatches to workers in batches."""
