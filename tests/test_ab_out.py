"""`kvperf ab --out`: checked before anything runs, and an earlier run's files are never replaced silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvperf.cli import main


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A directory for both sides; nothing runs in it (the checks come first, or run_ab is faked)."""
    return tmp_path


def _fast_args(checkout: Path, out: str, *extra: str) -> list[str]:
    return ["ab", "--baseline-dir", str(checkout), "--current-dir", str(checkout), "--out", out, "--cpus", "all",
            *extra, "--", "test_tiny_bench.py"]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("name", ["comparison.md", "baseline.log", "current.log", "baseline.json", "retries"])
def test_ab_refuses_to_replace_any_earlier_output(checkout, capsys, name):
    out = checkout / "ab"
    out.mkdir()
    (out / name).mkdir() if name == "retries" else (out / name).write_text("earlier")
    assert main(_fast_args(checkout, str(out))) == 2
    assert _one_error_line(capsys) == (f"kvperf: error: --out {out}: holds the results of an earlier A/B run "
                                       f"({name}): pass --overwrite to replace them, or --out DIR to write "
                                       "elsewhere\n")
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing ran, nothing was written


@pytest.mark.parametrize(("out", "message"), [
    ("", "--out '': give a directory for the results, e.g. --out kvperf-ab"),
    ("  ", "--out '  ': give a directory for the results, e.g. --out kvperf-ab"),
])
def test_ab_refuses_an_empty_out(checkout, capsys, monkeypatch, out, message):
    monkeypatch.chdir(checkout)
    assert main(_fast_args(checkout, out)) == 2
    assert _one_error_line(capsys) == f"kvperf: error: {message}\n"
    assert not (checkout / "baseline.log").exists()


def test_ab_refuses_an_out_that_is_a_file(checkout, capsys):
    file = checkout / "results.txt"
    file.write_text("mine")
    assert main(_fast_args(checkout, str(file))) == 2
    assert _one_error_line(capsys) == (f"kvperf: error: --out {file}: is a file, not a directory: give a directory "
                                       "for the results (it is created if needed)\n")
    assert main(_fast_args(checkout, str(file / "sub"))) == 2
    assert _one_error_line(capsys).startswith(f"kvperf: error: --out {file / 'sub'}: cannot write there (")
    assert file.read_text() == "mine"


def test_ab_refuses_an_out_on_a_read_only_file_system(checkout, capsys, monkeypatch):
    import errno
    import tempfile

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(_fast_args(checkout, str(checkout / "ab"))) == 2
    assert _one_error_line(capsys) == (f"kvperf: error: --out {checkout / 'ab'}: cannot write there (Read-only file "
                                       "system): give a writable directory\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_ab_refuses_a_read_only_out_directory(checkout, capsys):
    out = checkout / "ab"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(_fast_args(checkout, str(out))) == 2
        assert _one_error_line(capsys).startswith(f"kvperf: error: --out {out}: cannot write there (")
    finally:
        out.chmod(0o755)
