"""A cell's constraint vocabulary: resource names and label texts, and how both are encoded.

Amounts are stored as integer thousandths (milli units, u32): fractional needs such as
gpu=0.5 stay exact, sums stay integers, and MAX_AMOUNT keeps every sum inside u32. A label is
stored as the 64-bit blake2b hash of its "key=value" text (stable across processes, unlike
`hash()`); the text is kept in the cell's label text table only to be shown.

Resource names are interned in a cell-wide table of RESOURCE_NAMES entries (in the header
page): a need or offer is (index, amount), so a worker's offers are one fixed-size row and
`shm.resources.fitting` compares whole columns. A name, once added, stays until the cell is
recreated; a 17th name is refused (ResourceNamesFull) before anything changes.

Validation raises ValueError naming the limit; the gRPC boundaries turn it into
INVALID_ARGUMENT. Clients check the same limits first (`heapd.options`).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence

from heapd.shm.errors import ResourceNamesFull
from heapd.shm.layout import (
    LABEL_TEXTS,
    RESOURCE_NAME_BYTES,
    RESOURCE_NAMES,
    TASK_LABELS,
    TASK_NEEDS,
    WORKER_LABELS,
)
from heapd.shm.memory import CellMemory

MILLI = 1000  # stored units per unit of a resource
MAX_AMOUNT = 1_000_000.0  # per need or offer: 1e9 milli, so sums fit in u32
LABEL_PART_BYTES = 63  # a label's key, and its value, in utf-8
CPUS = "cpus"  # the resource a worker offers as many of as it has slots, unless told
_NAME_RE = re.compile(rf"[A-Za-z0-9_.-]{{1,{RESOURCE_NAME_BYTES}}}")
_HASH_MASK = (1 << 64) - 1


def resource_name(name: object) -> str:
    """`name` if it is 1..31 characters of [A-Za-z0-9_.-], else ValueError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"resource name {name!r} must be 1..{RESOURCE_NAME_BYTES} characters of "
            f"A-Z a-z 0-9 _ . -"
        )
    return name


def milli(name: str, amount: object) -> int:
    """A non-negative finite amount (at most MAX_AMOUNT) in milli units; a positive amount
    below one milli counts as one (a need never rounds away)."""
    if not isinstance(amount, int | float) or isinstance(amount, bool):
        raise ValueError(f"resource {name}: amount must be a number, not {amount!r}")
    if not math.isfinite(amount) or not 0 <= amount <= MAX_AMOUNT:
        raise ValueError(
            f"resource {name}: amount must be finite and in 0..{MAX_AMOUNT:.0f}, not {amount!r}"
        )
    units = round(amount * MILLI)
    return max(units, 1) if amount > 0 else 0


def amount_text(units: int) -> str:
    """Milli units as the number a user wrote: 1000 -> "1", 500 -> "0.5"."""
    return f"{units / MILLI:g}"


def label_text(key: object, value: object) -> str:
    """The text "key=value"; ValueError unless both are non-empty str of <= 63 utf-8 bytes and
    the key has no "="."""
    for part, what in ((key, "key"), (value, "value")):
        if not isinstance(part, str) or not 1 <= len(part.encode()) <= LABEL_PART_BYTES:
            raise ValueError(
                f"label {what} {part!r} must be a non-empty str of at most "
                f"{LABEL_PART_BYTES} bytes of utf-8"
            )
    assert isinstance(key, str) and isinstance(value, str)
    if "=" in key:
        raise ValueError(f"label key {key!r} must not contain '='")
    return f"{key}={value}"


def label_hash(text: str) -> int:
    """The stored form of a label: blake2b-64 of "key=value" (0 is reserved for "none")."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def needs(resources: Mapping[str, float] | None) -> list[tuple[str, int]]:
    """A task's resource needs as (name, milli), zero amounts dropped; ValueError past
    TASK_NEEDS or on a bad name or amount."""
    return _amounts(resources, TASK_NEEDS, "a task", keep_zero=False)


def offers(resources: Mapping[str, float] | None) -> list[tuple[str, int]]:
    """A worker's offers as (name, milli); ValueError past RESOURCE_NAMES or on a bad entry."""
    return _amounts(resources, RESOURCE_NAMES, "a worker", keep_zero=True)


def _amounts(
    resources: Mapping[str, float] | None, limit: int, who: str, keep_zero: bool
) -> list[tuple[str, int]]:
    if resources is None:
        return []
    if not isinstance(resources, Mapping):
        raise ValueError(f"resources must be a mapping of name to amount, not {resources!r}")
    if len(resources) > limit:
        raise ValueError(f"{who} names at most {limit} resources, not {len(resources)}")
    out = [(resource_name(n), milli(n, a)) for n, a in resources.items()]
    return out if keep_zero else [(n, a) for n, a in out if a]


def labels(given: Mapping[str, str] | None, worker: bool = False) -> list[str]:
    """Labels as sorted "key=value" texts; ValueError past TASK_LABELS (WORKER_LABELS) or on a
    bad key or value."""
    if given is None:
        return []
    if not isinstance(given, Mapping):
        raise ValueError(f"labels must be a mapping of key to value, not {given!r}")
    limit, who = (WORKER_LABELS, "a worker") if worker else (TASK_LABELS, "a task")
    if len(given) > limit:
        raise ValueError(f"{who} carries at most {limit} labels, not {len(given)}")
    return sorted(label_text(k, v) for k, v in given.items())


def split_label(text: str) -> tuple[str, str]:
    """("key", "value") of a "key=value" text."""
    key, _, value = text.partition("=")
    return key, value


# ---- the cell's tables (the caller holds the cell lock to change them)


def names(mem: CellMemory) -> list[str]:
    """The cell's resource names, by index."""
    out = []
    for raw in mem.resource_names.tolist():
        if not raw:
            break
        out.append(raw.decode())
    return out


def intern(mem: CellMemory, wanted: Iterable[str]) -> dict[str, int]:
    """The index of each name, adding new ones; ResourceNamesFull (nothing added) when they
    do not all fit."""
    known = {name: i for i, name in enumerate(names(mem))}
    new = [n for n in dict.fromkeys(wanted) if n not in known]
    if len(known) + len(new) > RESOURCE_NAMES:
        raise ResourceNamesFull(new, RESOURCE_NAMES)
    for name in new:
        index = len(known)
        mem.resource_names[index] = name.encode()
        known[name] = index
    return known


def remember_labels(mem: CellMemory, texts: Sequence[str]) -> None:
    """Keep the text of each label for display; a full table keeps the hash only."""
    table = mem.label_texts
    hashes = table["hash"]
    for text in texts:
        h = label_hash(text)
        start = h % LABEL_TEXTS
        for probe in range(LABEL_TEXTS):
            at = (start + probe) % LABEL_TEXTS
            there = int(hashes[at])
            if there == h:
                break
            if there == 0:
                table["text"][at] = text.encode()
                hashes[at] = h  # hash last: a reader never sees it without its text
                break


def label_of(mem: CellMemory, h: int) -> str:
    """The "key=value" text of a label hash; "#<hex>=?" if the table never kept it."""
    table = mem.label_texts
    hashes = table["hash"]
    start = h % LABEL_TEXTS
    for probe in range(LABEL_TEXTS):
        at = (start + probe) % LABEL_TEXTS
        there = int(hashes[at])
        if there == h:
            return bytes(table["text"][at]).decode()
        if there == 0:
            break
    return f"#{h & _HASH_MASK:016x}=?"
