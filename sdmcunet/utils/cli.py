"""Shared behaviour of the console scripts: user errors without tracebacks, one log setup."""

import argparse
import functools
import logging
import os
import sys
from typing import Callable

from sdmcunet.utils.errors import SDMCError

EXIT_USER_ERROR = 2


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def console_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a `main(argv)` so that an SDMCError becomes a one-line message and exit code 2.

    Anything else is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except SDMCError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print("interrupted; run the same command again to resume", file=sys.stderr)
            return 130

    return wrapper


def add_num_processes_argument(parser: argparse.ArgumentParser) -> None:
    """The `-np N` option of the commands that work case by case in worker processes."""
    parser.add_argument("-np", dest="num_processes", type=int, default=min(os.cpu_count() or 1, 8),
                        help="worker processes (default: number of CPUs, at most 8)")
