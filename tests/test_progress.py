import io
import sys
import time

from sdmcunet.utils.progress import NON_TERMINAL_SECONDS, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def redraws(stream: io.StringIO) -> int:
    return stream.getvalue().count("\r")


def slow_loop(**options) -> None:
    for _ in progress_bar(range(5), **options):
        time.sleep(0.12)  # longer than tqdm's 0.1 s between redraws on a terminal


def test_a_bar_redraws_on_a_terminal_and_writes_only_its_first_and_last_line_to_a_pipe_or_file():
    terminal, piped = Terminal(), io.StringIO()
    slow_loop(file=terminal)
    slow_loop(file=piped)
    assert redraws(terminal) >= 5
    assert redraws(piped) == 2 and "0/5" in piped.getvalue() and "5/5" in piped.getvalue()


def interval(**options) -> float:
    with progress_bar(range(1), **options) as bar:
        return bar.mininterval


def test_the_default_stream_is_standard_error_and_an_explicit_interval_wins(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert interval() == NON_TERMINAL_SECONDS
    assert interval(mininterval=1.0) == 1.0
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert interval() < 1.0
