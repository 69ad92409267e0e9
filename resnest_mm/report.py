"""Small pieces the command-line tools share: a Markdown table, a progress bar and a check of
an output file's path."""
import os
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence


def check_output_folder(path: str, *, name: str) -> None:
    """Fail before a long run, not after it, when a folder of outputs could not be made.

    Args:
        path: The folder (made later when missing).
        name: The argument or flag that gave it, for the message.

    Raises:
        ValueError: ``path`` is a file or lies under one.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f'{name}={path!r} is a file; expected a folder')
    _check_under_folders(path, name, 'made')


def _check_under_folders(path: str, name: str, verb: str) -> None:
    """The nearest existing folder above ``path`` is a folder, not a file."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f'{name}={path!r} cannot be {verb}: {parent!r} is a file, not a folder')


def check_output_file(path: str, *, name: str, extensions: Optional[Sequence[str]] = None
                      ) -> None:
    """Fail before a long run, not after it, when its output file could not be written.

    Args:
        path: The file to be written (its folders are made when missing).
        name: The argument or flag that gave it, for the message.
        extensions: Allowed extensions without the dot (None: any).

    Raises:
        ValueError: ``path`` is a folder, lies under a file, or has another extension.
    """
    if os.path.isdir(path):
        raise ValueError(f'{name}={path!r} is a folder; expected the path of a file')
    _check_under_folders(path, name, 'written')
    if extensions is not None:
        ext = os.path.splitext(path)[1].lstrip('.').lower()
        if ext not in extensions:
            raise ValueError(f'{name}={path!r}: the extension {ext or "(none)"!r} is not one of '
                             f'{", ".join(sorted(extensions))}')


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
