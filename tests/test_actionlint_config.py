"""Every custom runner label the workflows use is declared for actionlint."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
_HOSTED = {"self-hosted", "linux", "windows", "macos", "x64", "arm64"}


def test_custom_runner_labels_are_declared_for_actionlint():
    used: set[str] = set()
    for workflow in (ROOT / ".github" / "workflows").glob("*.yml"):
        for labels in re.findall(r"runs-on:\s*\[([^\]]*)\]", workflow.read_text()):
            used |= {label.strip() for label in labels.split(",")} - _HOSTED
    config = (ROOT / ".github" / "actionlint.yaml").read_text()
    declared = set(re.findall(r"^\s*-\s*(\S+)\s*$", config.split("labels:", 1)[1], re.MULTILINE))
    assert used == {"gpu"} and used <= declared
