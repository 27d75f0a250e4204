"""The PLM daemon: TaskService — takes submissions into the shared task heap, hands results back."""
