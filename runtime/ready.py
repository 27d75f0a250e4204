"""Readiness announcement: one JSON line on stdout once a role serves.

`heapd up` reads it to learn the ports each role bound (roles may bind port 0), without polling.
"""

from __future__ import annotations

import json
import os
import sys


def announce(role: str, address: str, metrics: str = "", socket: str = "") -> None:
    """Print {"ready": role, "address": ..., "pid": ...} (and "metrics": the HTTP endpoint's
    host:port, when it serves one; "socket": the unix: address it also listens on, when it
    does) and flush."""
    message = {"ready": role, "address": address, "pid": os.getpid()}
    if metrics:
        message["metrics"] = metrics
    if socket:
        message["socket"] = socket
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()
