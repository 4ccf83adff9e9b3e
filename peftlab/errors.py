"""Errors a user can cause. The CLI turns every `PeftlabError` into one message and exit code 2.

Raise these (never bare exceptions) for anything the user can fix: a bad spec key, a missing or
malformed data file, an adapter that does not fit the base model, an impossible device setting.
The message must name the file (and key path or row number) and say what was expected.
"""

from __future__ import annotations

from typing import Any


class PeftlabError(Exception):
    """A user-fixable problem. `str(err)` is the whole message shown to the user."""

    exit_code = 2


class SpecError(PeftlabError):
    """The study spec is invalid (unknown key, wrong type, unknown task/method/model...)."""


class DataError(PeftlabError):
    """A data file or dataset is missing, empty, malformed or inconsistent with its task."""


class ModelError(PeftlabError):
    """A model, tokenizer or adapter cannot be loaded or does not fit the study."""


class StoreError(PeftlabError):
    """The study directory cannot be used (not writable, locked by another process...)."""


class DegenerateInputError(PeftlabError):
    """A measure is undefined for this input (e.g. CKA 0/0 on constant representations).

    Stages catch it and store the value as undefined with `reason`, rather than failing.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def format_validation(err: Any, where: str) -> str:
    """One line per problem of a pydantic ValidationError, each naming `where` and the key path."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required field is missing"
        got = e.get("input")
        got_s = "" if e["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {loc}: {msg}{got_s}")
    return "\n".join(lines)
