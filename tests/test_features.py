"""What kvperf detects about the installed transformers release: the errors and skip reasons it gives."""

from __future__ import annotations

import importlib.util

import pytest
import transformers
from transformers import cache_utils

from kvperf.features import missing_quantized_backend, quanto_residual_cycle


def test_a_backend_this_release_lacks_names_the_release_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(cache_utils, "Fp8QuantizedLayer", raising=False)
    assert missing_quantized_backend("fp8") == (
        "the fp8 backend of transformers' QuantizedCache needs transformers 5.21 or newer "
        f"(this is {transformers.__version__}): pip install -U transformers")


def test_quanto_without_its_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "optimum.quanto" else real(name, *args))
    assert missing_quantized_backend("quanto") == ("the quanto backend needs optimum-quanto, which is not installed: "
                                                   "pip install 'kvperf[quantized]'")


def test_the_residual_cycle_is_the_residual_length_from_two_up() -> None:
    """Below two it is probed (1 or 2 by release); ``test_kv_size.py`` checks it against real caches."""
    assert [quanto_residual_cycle(r) for r in (2, 3, 128)] == [2, 3, 128]
    assert quanto_residual_cycle(0) == quanto_residual_cycle(1) in (1, 2)
