"""Errors shared by every layer."""
from __future__ import annotations

import re

__all__ = ["InputError", "OutputExistsError", "one_line"]


class InputError(ValueError):
    """Bad user input: the message is one line saying what was wrong and what to do."""


class OutputExistsError(InputError, FileExistsError):
    """An output exists, or appeared while a run worked (another run wrote it first): nothing was
    overwritten."""


#: a message longer than this (diffusers' run to several sentences) is cut to its first sentence
LONG_MESSAGE = 200


def one_line(message: object, limit: int = LONG_MESSAGE) -> str:
    """An error's message as one line: its first line, and of a long one (a library's text of several
    sentences) its first sentence."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else ""
    if len(text) > limit:
        end = re.search(r"(?<=[.!?])\s+(?=[A-Z])", text[20:])
        if end is not None:
            text = text[:20 + end.start()]
    return text
