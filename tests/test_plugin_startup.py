"""Start-up cost: the plugin loads in every pytest session of the environment, so a session that does
not use kvperf must not import torch or transformers; nor must `kvperf --help`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_SESSION = """
import sys, pytest
code = pytest.main({args!r})
heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
print("exit", int(code), "plugin", "kvperf.plugin" in sys.modules, "heavy", ",".join(heavy) or "none")
"""


def _heavy_modules_after(tmp_path: Path, *args: str) -> str:
    (tmp_path / "test_trivial.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    argv = [str(tmp_path / "test_trivial.py"), "-q", "-p", "no:cacheprovider", *args]
    out = subprocess.run([sys.executable, "-c", _SESSION.format(args=argv)], capture_output=True, text=True,
                         check=False, cwd=tmp_path)
    return out.stdout.strip().splitlines()[-1]


def test_a_session_that_does_not_use_kvperf_imports_no_torch(tmp_path: Path):
    assert _heavy_modules_after(tmp_path) == "exit 0 plugin True heavy none"
    # A kvperf option is checked before anything runs, which needs the model's config: then they load.
    assert _heavy_modules_after(tmp_path, "--kvperf-dtypes", "float32") == "exit 0 plugin True heavy torch,transformers"


def test_the_command_s_help_imports_no_torch():
    code = "import sys\nfrom kvperf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "print('heavy', sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.splitlines()[-1] == "heavy []"


def test_kv_size_imports_no_modeling_code():
    # transformers' config classes import torch themselves (modeling_rope_utils, whenever torch is
    # installed) and scan every model family's files, so that is the floor of `kvperf kv-size`; what
    # kvperf controls is that it imports no modeling code (seconds more) for a config alone.
    code = ("import contextlib, io, sys\nfrom kvperf.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    codes = [main(['kv-size', name]) for name in ('tiny-gpt2', 'tiny-llama-gqa', 'distilgpt2')]\n"
            "modeling = sorted(m for m in sys.modules if m == 'transformers.modeling_utils' or '.modeling_' in m\n"
            "                  and m.startswith('transformers.models.') and not m.endswith('modeling_auto'))\n"
            "print('exit', codes, 'modeling', modeling)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.splitlines()[-1] == "exit [0, 0, 0] modeling []", out.stderr[-2000:]


def test_the_families_sized_without_their_model_class_take_a_transformers_cache():
    from transformers import AutoConfig

    from kvperf.kv.kv_layers import STANDARD_CACHE_FAMILIES, check_model_class

    for model_type in sorted(STANDARD_CACHE_FAMILIES):
        config = AutoConfig.for_model(model_type)
        check_model_class(config, config, model_type, f"config of model_type {model_type!r}")  # raises if not
