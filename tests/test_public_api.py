"""kvperf's public API: every name in ``__all__`` resolves from the module that owns it, and importing
``kvperf`` alone stays free of torch (the names load on first use)."""

from __future__ import annotations

import subprocess
import sys

import kvperf


def test_every_public_name_resolves_from_its_module() -> None:
    assert sorted(kvperf._MODULES) == sorted(kvperf.__all__)
    for name in kvperf.__all__:
        value = getattr(kvperf, name)
        assert getattr(value, "__module__", kvperf._MODULES[name]) in (kvperf._MODULES[name], "typing"), name


def test_import_kvperf_does_not_import_torch() -> None:
    code = "import sys, kvperf; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
