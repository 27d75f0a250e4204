"""The `heapd` command line."""
