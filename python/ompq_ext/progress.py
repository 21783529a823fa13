"""The one progress display: a tqdm bar on standard error, shown by default only on a terminal."""

from __future__ import annotations

import sys


def show_progress(progress) -> bool:
    """``progress``: True / False, or None for "when standard error is a terminal"."""
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


def progress_bar(total: int, desc: str, unit: str, progress, *, leave: bool = False):
    """A tqdm bar (disabled unless ``show_progress(progress)``); use it as a context manager."""
    from tqdm.auto import tqdm  # imported on use: it is slow to import and often not needed

    return tqdm(total=total, desc=desc, unit=unit, disable=not show_progress(progress), file=sys.stderr,
                leave=leave, dynamic_ncols=True)
