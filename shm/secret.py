"""The cell's registration key: 32 random bytes in the segment header, from which the register
derives each registration's secret.

A worker's id and epoch are public (status shows them); the secret of a registration is an
HMAC of them under this key, handed to the worker once in RegisterWorkerResponse and required
on its Heartbeat stream and Deregister. The key lives in the 0600 segment, so it survives
register restarts (workers keep their streams' secrets) and dies with the cell.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
import os

KEY_AT = 3584  # header byte offset (after the latency histograms)
KEY_BYTES = 32
SECRET_BYTES = 16


def write_key(mm: mmap.mmap) -> None:
    """Fill a new segment's key with fresh random bytes."""
    mm[KEY_AT : KEY_AT + KEY_BYTES] = os.urandom(KEY_BYTES)


def read_key(mm: mmap.mmap) -> bytes:
    """The cell's key (a copy)."""
    return bytes(mm[KEY_AT : KEY_AT + KEY_BYTES])


def registration_secret(key: bytes, worker_id: int, epoch: int) -> bytes:
    """The secret that proves registration (worker_id, epoch)."""
    message = worker_id.to_bytes(8, "little") + epoch.to_bytes(4, "little")
    return hmac.new(key, message, hashlib.sha256).digest()[:SECRET_BYTES]


def proves(key: bytes, worker_id: int, epoch: int, secret: bytes) -> bool:
    """Whether `secret` is that registration's, compared in constant time."""
    if not 0 <= worker_id < 1 << 64 or not 0 <= epoch < 1 << 32:
        return False
    return hmac.compare_digest(registration_secret(key, worker_id, epoch), secret)
