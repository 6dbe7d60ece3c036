"""Energy per call: NVML's counter through a fake NVML, RAPL through a fake powercap tree, and the harness."""

from __future__ import annotations

import pathlib
import time
from pathlib import Path
from typing import Any

import pytest

from kvperf.errors import BadInputError
from kvperf.gate.ab_retry import merge_rounds
from kvperf.gate.result_file import check_case
from kvperf.measure.bench import extra_info
from kvperf.measure.energy import EnergyMeter, EnergyReading, energy_meter, energy_summary
from kvperf.measure.harness import result_from_timing, time_generation
from kvperf.measure.prompts import make_prompts
from kvperf.models import load_model
from kvperf.spec import GenerationSpec
from tests.test_telemetry import UUID, FakeNvml, identity

NO_RAPL = "RAPL not readable: {root} absent (no powercap driver: a VM or a container without it)"


def gpu_meter(nvml: FakeNvml) -> EnergyMeter:
    return energy_meter("cuda:0", nvml_factory=nvml, identity=identity())


def test_nvml_counter_read_around_a_call():
    nvml = FakeNvml(energy_mj=[1_000, 1_000, 3_500])  # the first read only checks the counter works
    with gpu_meter(nvml) as meter:
        assert meter.source == f"NVML total energy (cuda:0 matched to NVML by UUID {UUID})" and meter.note is None
        meter.start()
        assert meter.stop() == EnergyReading(2.5, meter.source)
    assert nvml.stopped == 1  # closing the meter shuts NVML down


@pytest.mark.parametrize(
    ("nvml", "note"),
    [
        (FakeNvml(energy_mj=None), "this GPU has no total-energy counter: NVML energy counter unreadable "
                                   "(nvmlDeviceGetTotalEnergyConsumption: Not Supported) (it needs Volta or newer)"),
        (FakeNvml(init_error="NVML cannot start: Driver Not Loaded"),
         "no GPU energy counter: NVML cannot start: Driver Not Loaded"),
        (FakeNvml([]), "no GPU energy counter: NVML sees no GPU on this machine"),
    ],
)
def test_no_gpu_counter_gives_none_and_the_reason(nvml, note):
    meter = gpu_meter(nvml)
    assert meter.source is None and meter.note == note
    meter.start()
    assert meter.stop() == EnergyReading(None, None, note)
    assert nvml.stopped == nvml.started  # nothing left open


@pytest.mark.parametrize(
    ("readings", "note"),
    [
        ([5, 5, 5], "the energy counter did not advance during the call (a call shorter than the counter's update "
                    "interval)"),
        ([5, 9, 2], "NVML energy counter went backwards (driver reloaded?)"),
        ([5, 5], "NVML energy counter unreadable (nvmlDeviceGetTotalEnergyConsumption: GPU is lost)"),
        ([5], "NVML energy counter unreadable (nvmlDeviceGetTotalEnergyConsumption: GPU is lost)"),
    ],
)
def test_a_counter_that_cannot_tell_gives_none_and_the_reason(readings, note):
    meter = gpu_meter(FakeNvml(energy_mj=readings))
    meter.start()
    reading = meter.stop()
    assert reading.energy_j is None and reading.note == note and reading.source is not None


def powercap(tmp_path: Path, zones: dict[str, tuple[str, int, int | None]]) -> Path:
    """A powercap tree: zone directory -> (name, energy_uj, max_energy_range_uj or None for no file)."""
    root = tmp_path / "powercap"
    for zone, (name, energy, max_range) in zones.items():
        (root / zone).mkdir(parents=True)
        (root / zone / "name").write_text(name + "\n")
        (root / zone / "energy_uj").write_text(f"{energy}\n")
        if max_range is not None:
            (root / zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return root


def set_energy(root: Path, zone: str, energy: int) -> None:
    (root / zone / "energy_uj").write_text(f"{energy}\n")


def test_rapl_sums_the_packages_and_undoes_a_wrap(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 1_000_000, 262_143_328_850),
                               "intel-rapl:0:0": ("core", 500, 262_143_328_850),  # inside package-0
                               "intel-rapl:1": ("package-1", 262_143_000_000, 262_143_328_850),
                               "intel-rapl:2": ("psys", 7, 262_143_328_850)})  # contains the packages
    with energy_meter("cpu", powercap_root=root) as meter:
        assert meter.source == "RAPL package-0+package-1 (whole processor)"
        meter.start()
        set_energy(root, "intel-rapl:0", 3_000_000)  # +2 J
        set_energy(root, "intel-rapl:0:0", 10**9)
        set_energy(root, "intel-rapl:1", 671_150)  # wrapped: +328_850 + 671_150 = +1 J
        set_energy(root, "intel-rapl:2", 10**12)
        assert meter.stop() == EnergyReading(3.0, meter.source)


def test_rapl_wrap_without_its_range_gives_none(tmp_path):
    root = powercap(tmp_path, {"intel-rapl:0": ("package-0", 1_000, None)})
    meter = energy_meter("cpu", powercap_root=root)
    meter.start()
    set_energy(root, "intel-rapl:0", 10)
    assert meter.stop().note == "RAPL package-0 wrapped and its max_energy_range_uj is unreadable"


def test_rapl_unreadable_gives_none_and_the_reason(tmp_path, monkeypatch):
    assert energy_meter("cpu", powercap_root=tmp_path / "none").note == NO_RAPL.format(root=tmp_path / "none")
    root = powercap(tmp_path, {"intel-rapl:0": ("psys", 1, 10)})
    assert energy_meter("cpu", powercap_root=root).note == f"RAPL not readable: no package domain under {root}"
    root = powercap(tmp_path / "2", {"intel-rapl:0": ("package-0", 1, 10)})
    energy = root / "intel-rapl:0" / "energy_uj"
    real_read_text = pathlib.Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self == energy:  # root-only since Linux 5.10; the tests may run as root, so it is faked
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", read_text)
    meter = energy_meter("cpu", powercap_root=root)
    assert meter.note == (f"RAPL not readable: permission denied on {energy} (root only since Linux 5.10: run as root, "
                          "or make it readable)")
    meter.start()
    assert meter.stop() == EnergyReading(None, None, meter.note)


def test_this_machine_says_what_it_has():
    """Whatever the machine, a meter gives a number or a reason, never neither."""
    with energy_meter("cpu") as meter:
        assert (meter.source is None) == (meter.note is not None)


class EventCounter:
    """A counter that logs its reads among the clock reads (``events``), adding 1 J per read."""

    source = "fake"

    def __init__(self, events: list[str]) -> None:
        self.events, self.value = events, 0

    def read(self) -> tuple[int, ...]:
        self.events.append("energy")
        self.value += 1
        return (self.value,)

    def joules_between(self, before: tuple[int, ...], after: tuple[int, ...]) -> float:
        return float(after[0] - before[0])

    def close(self) -> None:
        pass


def test_the_harness_reads_the_counter_outside_its_clocks(monkeypatch):
    model = load_model("tiny-gpt2")
    spec = GenerationSpec(batch_size=2, prompt_len=8, new_tokens=3)
    input_ids, attention_mask = make_prompts(model, spec)
    events: list[str] = []
    real_clock = time.perf_counter

    def clock() -> float:
        events.append("clock")
        return real_clock()

    monkeypatch.setattr(time, "perf_counter", clock)
    timing = time_generation(model, spec, input_ids, attention_mask, energy=EnergyMeter(EventCounter(events)))
    monkeypatch.undo()
    # The first read before the start clock, the second after the end clock: nothing of it is timed.
    assert events[:2] == ["energy", "clock"] and events[-2:] == ["clock", "energy"]
    assert events.count("energy") == 2
    result = result_from_timing(model, spec, timing, None)
    assert (result.energy_j, result.energy_per_token_j, result.energy_source, result.energy_note) == \
        (1.0, 1.0 / 6, "fake", None)
    without = result_from_timing(model, spec, time_generation(model, spec, input_ids, attention_mask), None)
    assert without.energy_j is None and without.energy_note == "energy was not measured (no meter given)"

    rounds = [result, result.__class__(**{**vars(result), "energy_j": 3.0, "energy_per_token_j": 0.5})]
    info = extra_info(rounds)
    assert (info["energy_j"], info["energy_per_token_j"], info["energy_j_samples"]) == (2.0, 1 / 3, [1.0, 3.0])
    check_case(info, "benchmarks[0]", "run.json")
    info = extra_info([result, without])
    assert info["energy_j"] is None and info["energy_j_samples"] == [1.0, None]
    assert info["energy_note"] == "1 of 2 rounds not measured: energy was not measured (no meter given)"
    check_case(info, "benchmarks[0]", "run.json")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("energy_j", -1.0, "a finite number of at least 0, or null"),
        ("energy_per_token_j", "1 J", "a finite number of at least 0, or null"),
        ("energy_note", 5, "a string or null"),
    ],
)
def test_result_files_refuse_damaged_energy(field, value, expected):
    with pytest.raises(BadInputError, match=f"'{field}' is .*, not {expected}: "):
        check_case({field: value}, "benchmarks[0]", "run.json")
    with pytest.raises(BadInputError, match="'energy_j_samples' holds -2 at index 1"):
        check_case({"energy_j_samples": [1.0, -2]}, "benchmarks[0]", "run.json")


@pytest.mark.gpu
def test_a_real_gpu_counts_energy():
    import torch

    with energy_meter(f"cuda:{torch.cuda.current_device()}") as meter:
        assert meter.source is not None, meter.note
        x = torch.randn(4096, 4096, device="cuda")
        torch.cuda.synchronize()
        meter.start()
        deadline = time.perf_counter() + 1.0  # longer than the counter's update interval
        while time.perf_counter() < deadline:
            x = x @ x
            x = x / x.norm()
            torch.cuda.synchronize()
        reading = meter.stop()
    assert reading.energy_j is not None and reading.energy_j > 0, reading.note


def test_ab_retries_merge_the_energy_of_their_rounds():
    def result_file(joules: list[float | None], note: str | None) -> dict[str, Any]:
        info = {"kvperf_schema": 1, "model": "m", "generated_tokens": 4, "e2e_s_samples": [1.0] * len(joules),
                "e2e_s": 1.0, "energy_j_samples": joules, "energy_note": note,
                **energy_summary(joules, 4, note)}
        return {"benchmarks": [{"name": "case", "extra_info": info}]}

    into = result_file([2.0, 4.0], None)
    assert merge_rounds(into, result_file([6.0], None), [("case", "m")]) == [("case", "m")]
    info = into["benchmarks"][0]["extra_info"]
    assert (info["energy_j"], info["energy_per_token_j"], info["energy_note"]) == (4.0, 1.0, None)
    assert merge_rounds(into, result_file([None, 8.0], "1 of 2 rounds not measured: no counter"), [("case", "m")])
    info = into["benchmarks"][0]["extra_info"]
    assert info["energy_j_samples"] == [2.0, 4.0, 6.0, None, 8.0] and info["rounds"] == 5
    assert (info["energy_j"], info["energy_per_token_j"]) == (None, None)
    assert info["energy_note"] == "1 of 5 rounds not measured: no counter"


def test_a_model_spread_over_several_gpus_gets_no_energy_with_the_reason(monkeypatch):
    """kvperf reads one GPU's counter: for a model over two GPUs that would be a share, not the energy."""
    import torch

    from kvperf.measure import harness

    monkeypatch.setattr(harness, "model_devices", lambda model: (torch.device("cuda:0"), torch.device("cuda:1")))
    with harness.model_energy_meter(object()) as meter:  # type: ignore[arg-type]
        meter.start()
        reading = meter.stop()
    assert reading.energy_j is None
    assert reading.note is not None and "spans 2 GPUs (cuda:0, cuda:1)" in reading.note
