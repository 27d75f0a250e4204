"""The progress bar of every long wait (`heapd submit --count`, `heapd bench`, the demo).

One look everywhere: what is counted, a bar, done/total, tasks per second and the time left. On
a console that is not a terminal (a pipe, a file, a test) the bar is disabled: nothing is drawn,
no escape code is written, so piped output stays exactly what the command prints.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, as rich estimates it over the last seconds ("1,234/s")."""

    def render(self, task: Task) -> Text:
        """The speed of `task`, blank until rich has two samples."""
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text("", style="progress.data.speed")
        text = f"{speed:,.0f}/s" if speed >= 10 else f"{speed:.1f}/s"
        return Text(text, style="progress.data.speed")


def task_progress(
    console: Console, *, transient: bool = False, auto_refresh: bool = True
) -> Progress:
    """A `Progress` drawing on `console`: description, bar, M/N, rate, elapsed, ETA.

    Disabled unless `console` is a terminal. `transient` clears the bars when the block ends
    (for a wait followed by output of its own). Without `auto_refresh` no thread redraws the
    bars 10 times a second: they are drawn only when the caller updates them with
    `refresh=True` (for measurements that a redraw at a random moment would disturb)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        auto_refresh=auto_refresh,
        disable=not console.is_terminal,
    )
