"""Checks every service boundary shares (each service's own validation module does the rest)."""

from __future__ import annotations

from collections.abc import Sized

from lema.core.errors import InvalidInput


def check_batch(items: Sized, limit: int, field: str = "items") -> None:
    """A batch request holds at least one item and at most `limit`: InvalidInput naming the field otherwise."""
    if not len(items):
        raise InvalidInput(f"{field} is empty")
    if len(items) > limit:
        raise InvalidInput(f"batch has {len(items)} {field}; the limit is {limit}")
