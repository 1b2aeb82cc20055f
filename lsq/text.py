"""Text helpers for messages: a user's value or a list of names, cut short so that a hostile
or huge input never makes a huge error (a list of 65536 levels, a 250 KB key)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit - 3` characters and '...'."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: Any) -> str:
    """A user's value in an error message, cut short: it may be a list of 65536 levels."""
    return cut(repr(list(value) if isinstance(value, tuple) else value), 60)


def listed(names: Sequence[str]) -> str:
    """Names joined by commas, the first 12 only when there are more."""
    return ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
