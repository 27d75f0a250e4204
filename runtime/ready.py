"""Readiness announcement: one JSON line on stdout once a role serves.

`heapd up` reads it to learn the ports each role bound (roles may bind port 0), without polling.
"""

from __future__ import annotations

import json
import os
import sys


def announce(role: str, address: str) -> None:
    """Print {"ready": role, "address": ..., "pid": ...} and flush."""
    sys.stdout.write(json.dumps({"ready": role, "address": address, "pid": os.getpid()}) + "\n")
    sys.stdout.flush()
