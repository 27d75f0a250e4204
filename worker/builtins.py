"""Builtin tasks used by experiments and benchmarks: `sleep` and `cpu`.

They need no user code on the worker, so a benchmark measures heapd and not imports. Params
arrive as a name → float map (the wire type); `bind` checks them before anything runs, so bad
params fail the task as BAD_TASK instead of as an exception of the task itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
import numpy.typing as npt

_FEATURES = 16
_MAX_STEPS = 1_000_000
_MAX_SIZE = 100_000
_MAX_SLEEP_S = 1e7  # time.sleep overflows near 9e9 s; no real task sleeps this long


class BuiltinError(ValueError):
    """The builtin is unknown or its params do not fit it."""


def sleep(seconds: float) -> float:
    """Sleep, then return the seconds slept (the W3/W4 workloads)."""
    time.sleep(seconds)
    return seconds


def cpu(steps: int = 100, size: int = 256) -> dict[str, float]:
    """Train a logistic regression by gradient descent, then run inference on held-out data.

    `size` samples of 16 features drawn from a fixed seed, `steps` full-batch gradient steps.
    Deterministic, so equal inputs give equal results on every worker.
    """
    rng = np.random.default_rng(0)
    true_w = rng.normal(size=_FEATURES)
    x_train, y_train = _samples(rng, true_w, size)
    x_test, y_test = _samples(rng, true_w, size)
    w = np.zeros(_FEATURES)
    for _ in range(steps):
        p = _sigmoid(x_train @ w)
        w -= 0.5 * (x_train.T @ (p - y_train)) / size
    p = np.clip(_sigmoid(x_train @ w), 1e-12, 1 - 1e-12)
    loss = -np.mean(y_train * np.log(p) + (1 - y_train) * np.log(1 - p))
    accuracy = np.mean((_sigmoid(x_test @ w) > 0.5) == (y_test > 0.5))
    return {"loss": float(loss), "accuracy": float(accuracy)}


def bind(name: str, params: Mapping[str, float]) -> Callable[[], object]:
    """Check `params` against builtin `name`: the ready-to-run call, or BuiltinError."""
    binder = _BINDERS.get(name)
    if binder is None:
        raise BuiltinError(f"unknown builtin {name!r} (known: {', '.join(sorted(_BINDERS))})")
    return binder(dict(params))


def _bind_sleep(params: dict[str, float]) -> Callable[[], object]:
    seconds = _take(params, "seconds", 0.0, maximum=_MAX_SLEEP_S)
    _refuse_extra("sleep", params)
    return partial(sleep, seconds)


def _bind_cpu(params: dict[str, float]) -> Callable[[], object]:
    steps = _take_int(params, "steps", 100, maximum=_MAX_STEPS)
    size = _take_int(params, "size", 256, maximum=_MAX_SIZE)
    _refuse_extra("cpu", params)
    return partial(cpu, steps, size)


_BINDERS: dict[str, Callable[[dict[str, float]], Callable[[], object]]] = {
    "sleep": _bind_sleep,
    "cpu": _bind_cpu,
}


def _take(params: dict[str, float], name: str, default: float, *, maximum: float) -> float:
    value = float(params.pop(name, default))
    if not 0 <= value <= maximum:  # also refuses NaN
        raise BuiltinError(f"param {name}={value} is out of range 0..{maximum:g}")
    return value


def _take_int(params: dict[str, float], name: str, default: int, *, maximum: int) -> int:
    value = _take(params, name, default, maximum=maximum)
    if not value.is_integer() or value < 1:
        raise BuiltinError(f"param {name}={value} must be a whole number >= 1")
    return int(value)


def _refuse_extra(name: str, params: dict[str, float]) -> None:
    if params:
        raise BuiltinError(f"builtin {name!r} takes no param(s) {', '.join(sorted(params))}")


_Array = npt.NDArray[np.float64]


def _samples(rng: np.random.Generator, true_w: _Array, size: int) -> tuple[_Array, _Array]:
    x = rng.normal(size=(size, _FEATURES))
    y = (x @ true_w + rng.normal(scale=0.5, size=size) > 0).astype(np.float64)
    return x, y


def _sigmoid(z: _Array) -> _Array:
    return 1.0 / (1.0 + np.exp(-z))
