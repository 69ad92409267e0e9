"""Small pieces the command-line tools share: a Markdown table and a progress bar."""
from contextlib import contextmanager
from typing import Iterator, Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table: one header row, then one line per row of cells."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


class ProgressBar:
    """A rich progress bar on stderr (mmengine depends on rich), or nothing when disabled.

    Args:
        enabled: Show the bar; when False every call does nothing.
        total: Steps to the end.
        name: The bar's first description.
    """

    def __init__(self, *, enabled: bool, total: int, name: str) -> None:
        self.bar = None
        if enabled and total > 0:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn('{task.description}'), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                console=Console(stderr=True))
            self.task = self.bar.add_task(name, total=total)

    @contextmanager
    def running(self) -> Iterator['ProgressBar']:
        """Draw the bar while the block runs."""
        if self.bar is None:
            yield self
            return
        with self.bar:
            yield self

    def step(self, text: str, n: int = 1) -> None:
        """Show ``text`` and advance ``n`` steps (0: only say what is running now)."""
        if self.bar is not None:
            self.bar.update(self.task, advance=n, description=text)
