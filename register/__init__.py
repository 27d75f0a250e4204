"""The register daemon: worker registration, heartbeat streams with results, death detection."""
