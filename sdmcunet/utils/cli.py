"""Shared behaviour of the console scripts: user errors without tracebacks, one log setup, checked numbers."""

import argparse
import functools
import logging
import math
import os
import sys
from typing import Callable, TypeVar

from sdmcunet.utils.errors import SDMCError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command ended by Ctrl-C
RERUN_TO_FINISH = "run the same command again to finish"  # every command but sdmc_train skips or redoes its work

Number = TypeVar("Number", int, float)


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def console_entry(main: Callable[..., int | None] | None = None, *,
                  after_interrupt: str = RERUN_TO_FINISH) -> Callable[..., int]:
    """Wrap a `main(argv)` so that an SDMCError becomes a one-line message and exit code 2.

    Anything else is a bug and keeps its traceback. Ctrl-C prints `after_interrupt`: what the user
    does to complete the work (`@console_entry(after_interrupt=...)` where it is not a plain re-run).
    """
    if main is None:
        return functools.partial(console_entry, after_interrupt=after_interrupt)

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return int(main(argv) or 0)
        except SDMCError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USER_ERROR
        except KeyboardInterrupt:
            print(f"interrupted; {after_interrupt}", file=sys.stderr)
            return EXIT_INTERRUPTED

    return wrapper


# --- numbers on the command line -------------------------------------------------------------------
# argparse `type=` functions: a number out of range ends the command at parse time with exit code 2
# and "argument OPTION: must be ..., got VALUE", before anything is read or written.

def _number_type(convert: Callable[[str], Number], accepts: Callable[[Number], bool],
                 expected: str) -> Callable[[str], Number]:
    def parse(text: str) -> Number:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


positive_int = _number_type(int, lambda value: value > 0, "a positive integer")
non_negative_int = _number_type(int, lambda value: value >= 0, "an integer >= 0")
random_seed = _number_type(int, lambda value: 0 <= value < 2**32, f"an integer from 0 to {2**32 - 1}")  # numpy's range
positive_float = _number_type(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
fraction = _number_type(float, lambda value: 0 < value < 1, "a number between 0 and 1 (both excluded)")


def add_num_processes_argument(parser: argparse.ArgumentParser) -> None:
    """The `-np N` option of the commands that work case by case in worker processes."""
    parser.add_argument("-np", dest="num_processes", type=positive_int, default=min(os.cpu_count() or 1, 8),
                        help="worker processes (default: number of CPUs, at most 8)")
