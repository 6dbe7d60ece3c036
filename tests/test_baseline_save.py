"""The save path under faults: a failed fsync, a failed rename, a full disk and a read-only directory
each raise ``OSError`` and leave nothing behind: no half-written baseline, no temporary file, and an
existing baseline untouched. ``check_writable`` finds such a directory before a run, and
``write_fallback`` keeps the results when the write fails anyway."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import pytest

import kvperf.gate.baseline
from kvperf.errors import BadInputError
from kvperf.gate.baseline import check_writable, load_baseline, write_baseline, write_fallback
from tests.faults import FaultyModule, full_disk_fdopen, oserror
from tests.test_compare import BASE, CASE, ENV, info, result_json

DATA = result_json({CASE: info(BASE)})
OLD = result_json({CASE: info([t * 2 for t in BASE])})


def faults() -> dict[str, tuple[str, FaultyModule, int]]:
    """Which module of kvperf.gate.baseline to replace, by what, and the errno the write must raise."""
    return {
        "fsync": ("os", FaultyModule(os, ("fsync",), oserror(errno.EIO)), errno.EIO),
        "rename": ("os", FaultyModule(os, ("link", "replace"), oserror(errno.EXDEV), times=2), errno.EXDEV),
        "full disk": ("os", full_disk_fdopen(), errno.ENOSPC),
        "read-only": ("tempfile", FaultyModule(tempfile, ("mkstemp",), oserror(errno.EROFS)), errno.EROFS),
    }


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
@pytest.mark.parametrize("fault", list(faults()))
def test_a_failed_write_raises_and_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         fault: str, overwrite: bool):
    target = tmp_path / ENV.key() / "quick.json"
    if overwrite:
        write_baseline(OLD, target)
    before = target.read_bytes() if overwrite else None
    module, faulty, code = faults()[fault]
    monkeypatch.setattr(kvperf.gate.baseline, module, faulty)
    with pytest.raises(OSError) as raised:
        write_baseline(DATA, target, overwrite=overwrite)
    assert raised.value.errno == code and faulty.failures >= 1
    if overwrite:
        assert target.read_bytes() == before  # the old baseline, whole
    else:
        assert not target.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == (["quick.json"] if overwrite else [])


def test_the_same_write_without_a_fault_succeeds(tmp_path: Path):
    """The control of the test above: the fault, not the data, made those writes fail."""
    target = tmp_path / ENV.key() / "quick.json"
    write_baseline(DATA, target)
    assert load_baseline(target).cases.keys() == {(CASE, "tiny-gpt2")}


def test_check_writable_accepts_a_new_directory_under_a_writable_one_and_leaves_nothing(tmp_path: Path):
    check_writable(tmp_path / "baselines" / "key")
    assert list(tmp_path.iterdir()) == []


def test_check_writable_refuses_a_file_in_the_way(tmp_path: Path):
    (tmp_path / "store").write_text("")
    with pytest.raises(BadInputError) as raised:
        check_writable(tmp_path / "store" / "key")
    assert str(raised.value) == (f"{tmp_path / 'store'}: is not a directory, so no baseline can be saved under "
                                 f"{tmp_path / 'store' / 'key'}: pass --kvperf-save-baseline=DIR with a directory")


def test_check_writable_refuses_a_read_only_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(kvperf.gate.baseline, "tempfile", FaultyModule(tempfile, ("mkstemp",), oserror(errno.EROFS)))
    with pytest.raises(BadInputError) as raised:
        check_writable(tmp_path / "key")
    assert str(raised.value) == (f"{tmp_path / 'key'}: cannot save a baseline there (Read-only file system): "
                                 "pass --kvperf-save-baseline=DIR with a writable DIR")


def test_fallback_goes_to_the_temp_dir_then_the_current_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    temp, cwd = tmp_path / "temp", tmp_path / "cwd"
    temp.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(cwd)
    path, failures = write_fallback(DATA, "quick")
    assert path is not None and path.parent == temp and path.name.startswith("kvperf-unsaved-quick-")
    assert failures == [] and load_baseline(path).cases.keys() == {(CASE, "tiny-gpt2")}

    monkeypatch.setattr(kvperf.gate.baseline, "tempfile", FaultyModule(
        tempfile, ("mkstemp",), oserror(errno.ENOSPC), when=lambda *a, dir=None, **k: Path(dir) == temp))
    path, failures = write_fallback(DATA, "quick")
    assert path is not None and path.parent == cwd
    assert failures == [f"{temp}: No space left on device"]


def test_fallback_reports_when_nothing_could_be_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(kvperf.gate.baseline, "tempfile", FaultyModule(tempfile, ("mkstemp",), oserror(errno.EROFS),
                                                                  times=2))
    path, failures = write_fallback(DATA, "quick")
    assert path is None and failures == [f"{tmp_path}: Read-only file system"] * 2
    assert list(tmp_path.iterdir()) == []
