"""Errors raised on bad input: every message names the file, frame or atom at fault."""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input (a file, an array, a selection) with a message saying what was expected.

    Subclasses :class:`ValueError`, so callers that already catch ``ValueError`` keep working.
    """


def where(source: str | None) -> str:
    """Prefix for messages: ``"<source>: "`` or ``""`` when the source is unknown."""
    return f"{source}: " if source else ""
