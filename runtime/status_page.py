"""The PLM's status page: one self-contained HTML5 document (inline CSS and SVG, no script, no
external asset) that reloads itself, for a browser pointed at the metrics port.

`render` is pure: it takes the dict `heapd status --json` prints and the points of a
`runtime.history.History`, and returns the page. Every string of the status (addresses,
hostnames, labels, reasons) is user-controlled and goes through `html.escape`; numbers are
formatted here. Charts keep at most MAX_CHART_POINTS points per line, taking each group's
maximum so that a short spike stays visible.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heapd.runtime.history import HistoryPoint

CONTENT_TYPE = "text/html; charset=utf-8"
REFRESH_S = 2.0
MAX_CHART_POINTS = 150
CHART_W, CHART_H = 600, 120  # SVG user units; the chart scales to its box

_STATE_CLASS = {"ALIVE": "ok", "DRAINING": "warn", "DEAD": "bad"}

_CSS = """\
:root{color-scheme:light dark}
body{font:14px/1.4 system-ui,sans-serif;max-width:80em;margin:1em auto;padding:0 1em}
h1{font-size:1.3em;margin:0}h2{font-size:1.05em;margin:1.2em 0 .4em}
.sub,.ax,th,dt,footer,.empty{color:#888}
dl{display:flex;flex-wrap:wrap;gap:.5em;margin:.8em 0}
dl div{border:1px solid #8884;border-radius:4px;padding:.2em .7em;min-width:6em}
dt{font-size:.8em}dd{margin:0;font-size:1.2em}
dd,td{font-variant-numeric:tabular-nums}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(22em,1fr));gap:1em}
figure{margin:0;border:1px solid #8884;border-radius:4px;padding:.5em}
figcaption{font-size:.9em}figcaption b{margin-right:.6em}
.key{margin-right:.7em;white-space:nowrap}
.key i{display:inline-block;width:1em;height:3px;vertical-align:middle;margin-right:.3em}
.scale{float:right;color:#888}
svg{display:block;width:100%;height:auto;margin:.3em 0}
svg path{fill:none;stroke-width:2;stroke-linejoin:round;stroke-linecap:round;\
vector-effect:non-scaling-stroke}
svg path.grid{stroke:#8884;stroke-width:1}
.ax{display:flex;justify-content:space-between;font-size:.8em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25em .6em;border-bottom:1px solid #8883}
th{font-weight:normal}
.ok{color:#2a2}.warn{color:#d80}.bad{color:#d33}
footer{font-size:.85em;margin:1.5em 0}
"""


@dataclass(frozen=True, slots=True)
class _Series:
    """One line of a chart."""

    name: str
    color: str
    values: list[float]


def render(
    status: Mapping[str, Any],
    points: Sequence[HistoryPoint],
    refresh_s: float = REFRESH_S,
    *,
    now: float | None = None,
) -> str:
    """The page for `status` (the dict of `heapd status --json`) and the history `points`
    (oldest first), reloading every `refresh_s` (whole seconds, at least 1); `now` (unix
    seconds, default the clock) dates the heartbeats."""
    if not (math.isfinite(refresh_s) and refresh_s > 0):
        raise ValueError(f"status page refresh_s must be a positive number, got {refresh_s!r}")
    now = time.time() if now is None else now
    refresh = max(1, math.ceil(refresh_s))
    cell = _e(status.get("cell", ""))
    workers = sorted(status.get("workers", []), key=lambda w: int(w.get("worker_id", 0)))
    return "".join(
        [
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
            f'<meta http-equiv="refresh" content="{refresh}">\n',
            '<meta name="viewport" content="width=device-width,initial-scale=1">\n',
            f"<title>heapd \u00b7 {cell}</title>\n<style>\n{_CSS}</style>\n</head>\n<body>\n",
            _header(status, workers),
            _charts(points),
            _workers(workers, now),
            _unschedulable(status),
            f"<footer>updated {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(now))}"
            f' \u00b7 reloads every {refresh} s \u00b7 as JSON: <a href="status">status</a>'
            ' \u00b7 <a href="metrics">metrics</a></footer>\n</body>\n</html>\n',
        ]
    )


def _e(value: object) -> str:
    """Any value as HTML text, quotes included (it may land in an attribute)."""
    return html.escape(str(value), quote=True)


# ---- header and totals


def _header(status: Mapping[str, Any], workers: Sequence[Mapping[str, Any]]) -> str:
    aging = float(status.get("aging_s", 0.0))
    policy = _e(status.get("policy") or "least-loaded")
    aging_text = f", aging 1 priority level per {aging:g} s" if aging else ""
    alive = [w for w in workers if w.get("state") == "ALIVE"]
    slots = sum(int(w.get("slots", 0)) for w in alive)
    free = sum(max(int(w.get("slots", 0)) - int(w.get("in_flight", 0)), 0) for w in alive)
    tiles = [
        ("queued", status.get("queued", 0)),
        ("running", status.get("running", 0)),
        ("pending", status.get("pending", 0)),
        ("unschedulable", status.get("unschedulable", 0)),
        ("workers alive", f"{len(alive)} of {len(workers)}"),
        ("slots free", f"{free} of {slots}"),
        ("submitted", status.get("submitted_total", 0)),
        ("succeeded", status.get("succeeded_total", 0)),
        ("failed", status.get("failed_total", 0)),
        ("cancelled", status.get("cancelled_total", 0)),
        ("results held", status.get("held_results", 0)),
        ("task capacity", status.get("task_capacity", 0)),
    ]
    dl = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in tiles)
    return (
        f"<header><h1>heapd cell {_e(status.get('cell', ''))}</h1>\n"
        f'<p class="sub">scheduling: {policy}{aging_text}</p></header>\n<dl>{dl}</dl>\n'
    )


# ---- charts


def _charts(points: Sequence[HistoryPoint]) -> str:
    head = "<h2>Last minutes</h2>\n"
    if len(points) < 2:
        return head + '<p class="empty">Charts appear once the cell has been sampled twice.</p>\n'
    at = [p.at for p in points]
    charts = [
        _chart(
            "Queue depth",
            at,
            [
                _Series("queued", "#1f77b4", [float(p.queued) for p in points]),
                _Series("pending", "#9467bd", [float(p.pending) for p in points]),
                _Series("running", "#2ca02c", [float(p.running) for p in points]),
            ],
            _count,
        ),
        _chart(
            "Throughput",
            at,
            [
                _Series("settled", "#2ca02c", [p.settled_per_s for p in points]),
                _Series("submitted", "#1f77b4", [p.submitted_per_s for p in points]),
            ],
            _rate,
        ),
        _chart(
            "Latency, end to end",
            at,
            [
                _Series("p50", "#1f77b4", [p.p50_s for p in points]),
                _Series("p99", "#d62728", [p.p99_s for p in points]),
            ],
            _duration,
        ),
    ]
    return f'{head}<div class="charts">\n{"".join(charts)}</div>\n'


def _chart(
    title: str, at: Sequence[float], series: Sequence[_Series], fmt: Callable[[float], str]
) -> str:
    """A figure: caption with each line's latest value, the SVG, the time axis."""
    keys = "".join(
        f'<span class="key"><i style="background:{s.color}"></i>{_e(s.name)} '
        f"{_e(_latest(s.values, fmt))}</span>"
        for s in series
    )
    xs, binned = _downsample(at, series)
    peak = max((v for s in binned for v in s.values if math.isfinite(v)), default=math.nan)
    if math.isnan(peak):
        body = '<p class="empty">nothing settled in the window</p>'
        scale = ""
    else:
        top = _nice_ceiling(peak)
        grid = f'<path class="grid" d="M0 {CHART_H}H{CHART_W}M0 {CHART_H // 2}H{CHART_W}"/>'
        lines = "".join(
            f'<path stroke="{s.color}" d="{d}"/>' for s in binned if (d := _path(xs, s.values, top))
        )
        body = (
            f'<svg viewBox="0 -2 {CHART_W} {CHART_H + 4}" role="img" aria-label="{_e(title)}">'
            f"{grid}{lines}</svg>"
        )
        scale = f'<span class="scale">0 \u2013 {_e(fmt(top))}</span>'
    span = at[-1] - at[0]
    return (
        f"<figure><figcaption><b>{_e(title)}</b>{keys}{scale}</figcaption>\n{body}\n"
        f'<div class="ax"><span>{_e(_ago(span))}</span><span>now</span></div></figure>\n'
    )


def _downsample(
    at: Sequence[float], series: Sequence[_Series]
) -> tuple[list[float], list[_Series]]:
    """At most MAX_CHART_POINTS points per line: consecutive points grouped, each group drawn
    at its last time with its largest value (NaN if it has none)."""
    n = len(at)
    group = math.ceil(n / MAX_CHART_POINTS)
    if group <= 1:
        return list(at), list(series)
    starts = range(0, n, group)
    xs = [at[min(i + group, n) - 1] for i in starts]
    binned = [
        _Series(s.name, s.color, [_nanmax(s.values[i : i + group]) for i in starts]) for s in series
    ]
    return xs, binned


def _nanmax(values: Iterable[float]) -> float:
    return max((v for v in values if math.isfinite(v)), default=math.nan)


def _path(xs: Sequence[float], values: Sequence[float], top: float) -> str:
    """SVG path data of one line scaled to 0..top; a NaN breaks the line, and a point alone
    between breaks is drawn as a dot (a zero-length segment with round caps)."""
    x0, width = xs[0], max(xs[-1] - xs[0], 1e-9)
    parts: list[str] = []
    drawing = False
    for i, (x, v) in enumerate(zip(xs, values, strict=True)):
        if not math.isfinite(v):
            drawing = False
            continue
        px = (x - x0) / width * CHART_W
        py = CHART_H - min(max(v / top, 0.0), 1.0) * CHART_H
        parts.append(f"{'L' if drawing else 'M'}{px:.0f} {py:.0f}")
        alone = not drawing and (i + 1 == len(values) or not math.isfinite(values[i + 1]))
        if alone:
            parts.append("h0")
        drawing = True
    return "".join(parts)


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at least `value` (1 for nothing): the chart's top."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 5.0, 10.0):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10.0 * power


def _latest(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    for v in reversed(values):
        if math.isfinite(v):
            return fmt(v)
    return "-"


def _count(value: float) -> str:
    return f"{value:g}"


def _rate(value: float) -> str:
    return f"{value:.3g}/s"


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} \u00b5s"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _ago(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s ago"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s ago" if rest else f"{minutes} min ago"


# ---- workers and stuck tasks


def _workers(workers: Sequence[Mapping[str, Any]], now: float) -> str:
    head = "".join(
        f"<th>{c}</th>"
        for c in (
            "id",
            "address",
            "host",
            "pid",
            "state",
            "in flight / slots",
            "done",
            "last heartbeat",
            "resources free / offered",
            "labels",
        )
    )
    rows = "".join(_worker_row(w, now) for w in workers)
    if not rows:
        rows = '<tr><td colspan="10" class="empty">no worker registered</td></tr>\n'
    return (
        f"<h2>Workers ({len(workers)})</h2>\n<table>\n<thead><tr>{head}</tr></thead>\n"
        f"<tbody>\n{rows}</tbody>\n</table>\n"
    )


def _worker_row(w: Mapping[str, Any], now: float) -> str:
    state = str(w.get("state", ""))
    state_class = _STATE_CLASS.get(state)
    beat = float(w.get("last_heartbeat", 0.0))
    cells = [
        _td(w.get("worker_id", "")),
        _td(w.get("address", "")),
        _td(w.get("hostname", "")),
        _td(w.get("pid", "")),
        f'<td class="{state_class}">{_e(state)}</td>' if state_class else _td(state),
        _td(f"{w.get('in_flight', 0)} / {w.get('slots', 0)}"),
        _td(w.get("tasks_done", 0)),
        _td(_ago(now - beat) if beat else "-"),
        _td(_resources(w.get("resources", {}), w.get("resources_free", {}))),
        _td(", ".join(f"{k}={v}" for k, v in sorted(w.get("labels", {}).items())) or "-"),
    ]
    return f"<tr>{''.join(cells)}</tr>\n"


def _td(value: object) -> str:
    return f"<td>{_e(value)}</td>"


def _resources(offered: Mapping[str, Any], free: Mapping[str, Any]) -> str:
    """ "cpus 3/4, gpu 1/1": free of offered, per resource."""
    parts = [f"{n} {float(free.get(n, 0.0)):g}/{float(a):g}" for n, a in sorted(offered.items())]
    return ", ".join(parts) or "-"


def _unschedulable(status: Mapping[str, Any]) -> str:
    count = int(status.get("unschedulable", 0))
    if not count:
        return ""
    examples: Sequence[Mapping[str, Any]] = status.get("unschedulable_examples", [])
    items = "".join(
        f"<li>task {_e(t.get('task_id', ''))}: {_e(t.get('reason', ''))}</li>" for t in examples
    )
    listed = f"<ul>\n{items}</ul>\n" if items else ""
    return (
        f'<h2 class="warn">Unschedulable</h2>\n<p>{count} queued task(s) no live worker can run'
        f"{'; for example:' if items else '.'}</p>\n{listed}"
    )
