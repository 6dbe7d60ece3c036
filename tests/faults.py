"""Fault injection for the save path: stand-ins for the ``os`` and ``tempfile`` modules of
``kvperf.gate.baseline`` in which one function fails the way a full disk, a read-only file system or a
failing device makes it fail. Only ``kvperf.gate.baseline`` sees them (``monkeypatch.setattr`` on its
module attribute), so pytest, pytester and pytest-benchmark keep the real modules."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["FaultyModule", "full_disk_fdopen", "oserror"]


def oserror(code: int) -> OSError:
    """``OSError(ENOSPC, "No space left on device")`` and the like, as the kernel reports them."""
    return OSError(code, os.strerror(code))


class FaultyModule:
    """``real``, except that ``names`` raise ``error`` on the calls that ``when`` accepts, after the first
    ``skip`` of them and at most ``times`` times. ``failures`` counts the failures raised."""

    def __init__(self, real: ModuleType, names: tuple[str, ...], error: OSError, *,
                 when: Callable[..., bool] = lambda *args, **kwargs: True, skip: int = 0, times: int = 1) -> None:
        self._real, self._names, self._error, self._when = real, names, error, when
        self._skip, self._times = skip, times
        self.failures = 0

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._real, attr)
        if attr not in self._names:
            return value

        def faulty(*args: Any, **kwargs: Any) -> Any:
            if self._when(*args, **kwargs):
                if self._skip:
                    self._skip -= 1
                elif self.failures < self._times:
                    self.failures += 1
                    raise self._error
            return value(*args, **kwargs)

        return faulty


class _FullDiskFile:
    """A text file whose writes fail with ENOSPC."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, text: str) -> int:
        raise oserror(errno.ENOSPC)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._real, attr)

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()


def full_disk_fdopen() -> FaultyModule:
    """An ``os`` whose first ``fdopen`` gives a file that a full disk refuses to write to."""

    class _Os(FaultyModule):
        def __getattr__(self, attr: str) -> Any:
            if attr != "fdopen":
                return getattr(os, attr)

            def fdopen(*args: Any, **kwargs: Any) -> Any:
                real = os.fdopen(*args, **kwargs)
                if self.failures < 1:
                    self.failures += 1
                    return _FullDiskFile(real)
                return real

            return fdopen

    return _Os(os, ("fdopen",), oserror(errno.ENOSPC))
