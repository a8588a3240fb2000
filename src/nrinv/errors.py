"""Errors shared by every layer."""
from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad user input: the message is one line saying what was wrong and what to do."""
