"""Errors shared by every layer."""
from __future__ import annotations

__all__ = ["InputError", "OutputExistsError"]


class InputError(ValueError):
    """Bad user input: the message is one line saying what was wrong and what to do."""


class OutputExistsError(InputError, FileExistsError):
    """An output exists, or appeared while a run worked (another run wrote it first): nothing was
    overwritten."""
