"""kvperf's error hierarchy. Every message names the bad input and says how to fix it."""

from __future__ import annotations

__all__ = ["BadInputError", "KvperfError", "ModelNotAvailableError", "UsageError"]

#: Exit status of the ``kvperf`` command for a user mistake (bad option, unreadable file).
EXIT_BAD_INPUT = 2


class KvperfError(Exception):
    """Base class of every error kvperf raises on purpose."""

    exit_code = EXIT_BAD_INPUT


class UsageError(KvperfError, ValueError):
    """A bad argument or option value."""


class BadInputError(KvperfError):
    """An input file that cannot be used (unreadable, truncated, wrong schema)."""


class ModelNotAvailableError(KvperfError):
    """A model name that is neither a preset nor loadable offline."""
