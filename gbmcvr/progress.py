"""Progress of long work: messages through the standard `gbmcvr` logger, and bars with ETA (rich) for counted
work when stderr is a terminal; plain timestamped lines, a few per task, when it is not (logs, CI, pipes)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

LOG = logging.getLogger("gbmcvr")
PLAIN_LINES_PER_TASK = 10  # without a terminal, a counted task prints about this many lines


class Task:
    """One counted piece of work (rounds, batches, trials): `update` it; a bar or a few lines show it."""

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str,
        emit: Callable[[str], None],
        bars: Any = None,
        every: int | None = None,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.completed = 0
        self._emit, self._bars, self._every = emit, bars, every
        self._next_line_at = every or 0
        self.task_id = bars.add_task(label, total=total, status="") if bars is not None else None

    def update(self, completed: int, status: str = "", total: int | None = None) -> None:
        """Set the count done so far (and the total, where it changes: early stopping ends boosting sooner)."""
        self.completed = completed
        self.total = self.total if total is None else total
        if self._bars is not None:
            self._bars.update(self.task_id, completed=completed, total=self.total, status=status)
            return
        if completed >= self._next_line_at or completed == self.total:
            self._next_line_at = completed + (self._every or max(1, (self.total or 0) // PLAIN_LINES_PER_TASK))
            of = f"/{self.total}" if self.total else ""
            self._emit(f"{self.label}: {completed}{of} {self.unit}".rstrip() + (f" {status}" if status else ""))


class Reporter:
    """What stages call to report: `reporter(message)` logs a line; `with reporter.task(...) as t` counts work."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console
        self._bars: Any = None

    def __call__(self, message: str) -> None:
        LOG.info(message)

    @property
    def draws_bars(self) -> bool:
        """Whether counted work shows as bars (a terminal) rather than lines."""
        return self._console is not None

    @contextlib.contextmanager
    def task(self, label: str, total: int | None, unit: str = "", every: int | None = None) -> Iterator[Task]:
        if self._console is None:
            yield Task(label, total, unit, LOG.info, every=every)
            return
        from rich import progress as rp
        from rich.table import Column

        bars = rp.Progress(
            rp.TextColumn("{task.description}", table_column=Column(no_wrap=True, min_width=len(label))),
            rp.BarColumn(bar_width=16, table_column=Column(no_wrap=True, min_width=16)),
            rp.MofNCompleteColumn(table_column=Column(no_wrap=True, min_width=9)),
            rp.TextColumn("eta", table_column=Column(no_wrap=True, min_width=3)),
            rp.TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
            # the status gives way on a narrow terminal, never the count or the ETA
            rp.TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=self._console,
        )
        with bars:
            yield Task(label, total, unit, LOG.info, bars)


def counted(
    report: Callable[[str], None], label: str, total: int | None, unit: str = "", every: int | None = None
) -> Any:
    """A counted task on `report`: bars where it is a terminal's Reporter, else lines through `report` (every
    `every` units, or about ten per task)."""
    if isinstance(report, Reporter):
        return report.task(label, total, unit, every)
    return contextlib.nullcontext(Task(label, total, unit, report, every=every))


def configure(verbosity: int, stream: Any = None) -> Reporter:
    """Set up the `gbmcvr` logger for one command (-q: warnings only, -v: debug) and return its Reporter:
    bars with ETA on a terminal, timestamped lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
    LOG.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    LOG.propagate = False
    if bool(getattr(stream, "isatty", lambda: False)()):
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        console = Console(file=stream, highlight=False)
        LOG.addHandler(
            RichHandler(
                console=console,
                show_level=False,
                show_path=False,
                markup=False,
                highlighter=NullHighlighter(),
                log_time_format="%H:%M:%S",
            )
        )
        return Reporter(console if verbosity >= 0 else None)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    LOG.addHandler(handler)
    return Reporter()
