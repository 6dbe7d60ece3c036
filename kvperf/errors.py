"""kvperf's error hierarchy and exit codes. Every message names the bad input and says how to fix it."""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_NOTHING_COMPARED",
    "EXIT_OUT_OF_MEMORY",
    "EXIT_SAVE_FAILED",
    "BadInputError",
    "KvperfError",
    "ModelNotAvailableError",
    "OutOfMemoryError",
    "UsageError",
]

#: Exit status of the ``kvperf`` command for a user mistake (bad option, unreadable file).
EXIT_BAD_INPUT = 2
#: Exit status of ``kvperf run`` for a case that does not fit in the device's memory.
EXIT_OUT_OF_MEMORY = 5
#: Exit status of a pytest session with ``--kvperf-compare`` or ``--kvperf-save-baseline`` that had
#: nothing to compare or save: no kvperf case ran (all skipped or deselected), or none of the cases that
#: ran is in the baseline. pytest's own codes are 0-5.
EXIT_NOTHING_COMPARED = 6
#: Exit status of a pytest session whose baseline could not be written where it was asked to go (a
#: full disk, a read-only file system); the results are kept in a fallback file that the session names.
EXIT_SAVE_FAILED = 7


class KvperfError(Exception):
    """Base class of every error kvperf raises on purpose."""

    exit_code = EXIT_BAD_INPUT


class UsageError(KvperfError, ValueError):
    """A bad argument or option value."""


class BadInputError(KvperfError):
    """An input file that cannot be used (unreadable, truncated, wrong schema)."""


class ModelNotAvailableError(KvperfError):
    """A model name that is neither a preset nor loadable offline."""


class OutOfMemoryError(KvperfError):
    """A case (or its model) that does not fit in the memory of its device; the message says its size.

    Not ``torch.OutOfMemoryError``: kvperf raises this one after it freed what the failed case held."""

    exit_code = EXIT_OUT_OF_MEMORY
