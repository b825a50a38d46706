"""Progress bars: tqdm, redrawn as it likes on a terminal, and a line every NON_TERMINAL_SECONDS where its
output goes to a pipe or a file (CI, nohup, a cluster's job log), which would otherwise get a line per redraw."""

import sys
from typing import Iterable

from tqdm import tqdm

NON_TERMINAL_SECONDS = 30.0


def progress_bar(iterable: Iterable | None = None, *, bar_class: type[tqdm] = tqdm, **options) -> tqdm:
    """`bar_class(iterable, **options)`, at most one line every NON_TERMINAL_SECONDS unless its stream (`file`,
    else standard error) is a terminal."""
    stream = options.get("file") or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        options.setdefault("mininterval", NON_TERMINAL_SECONDS)
    return bar_class(iterable, **options)
