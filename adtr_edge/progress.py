"""Progress bars for long work (rich ships with typer); silent when not on a terminal or when disabled."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


@contextlib.contextmanager
def progress_bar(enabled: bool = True) -> Iterator[object | None]:
    """Yield a rich ``Progress`` (or None when disabled) that callers add tasks to."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=not sys.stderr.isatty(),
    ) as progress:
        yield progress


class Task:
    """A task on an optional progress bar: ``advance`` and ``info`` are no-ops without one."""

    def __init__(self, progress, description: str, total: int):
        self.progress = progress
        self.id = progress.add_task(description, total=total, info="") if progress is not None else None

    def total(self, total: int) -> None:
        """Change the task's length (a time budget decides the epochs after the first one)."""
        if self.progress is not None:
            self.progress.update(self.id, total=total)

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.progress is not None:
            kwargs = {"info": info} if info is not None else {}
            self.progress.update(self.id, advance=n, **kwargs)
