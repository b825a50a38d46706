"""Naming many things in one message without flooding the terminal."""

from typing import Iterable

MAX_LISTED = 20


def listed(names: Iterable[str], limit: int = MAX_LISTED, separator: str = ", ") -> str:
    """'a, b, c', or the first `limit` names and how many more there are."""
    names = [str(name) for name in names]
    shown = separator.join(names[:limit])
    return f"{shown}{separator}... and {len(names) - limit} more" if len(names) > limit else shown
