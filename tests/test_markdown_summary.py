"""`--format markdown-summary` fits a GitHub comment: the verdict, regressions first, the rest folded."""

from __future__ import annotations

from kvperf.gate.compare import compare
from kvperf.gate.markdown_summary import GITHUB_COMMENT_LIMIT, render_markdown_summary
from kvperf.gate.render import render_markdown
from tests.test_compare import BASE, info, run


def _big(cases: int):
    names = [f"test_matrix[cache=on-bs={i}-prompt=8-new=4-fp32]" for i in range(cases)]
    base = run({n: info(BASE) for n in names})
    # every 10th case does more work (a regression), the others less (improved); deterministic metrics only,
    # so that no bootstrap runs
    cur = run({n: info(BASE, flops=2e6 if i % 10 == 0 else 5e5) for i, n in enumerate(names)})
    return compare(base, cur, timings="skip")


def test_a_comparison_too_big_for_a_comment_is_summarised_within_the_limit():
    comparison = _big(600)
    assert len(render_markdown(comparison)) > GITHUB_COMMENT_LIMIT  # what the issue saw: 67,673 characters
    text = render_markdown_summary(comparison)
    assert len(text) <= GITHUB_COMMENT_LIMIT
    assert text.startswith("### kvperf: ❌ Performance regression\n")
    regressions, others = text.index("#### Regressions"), text.index("<details><summary>Other changes (")
    assert regressions < others
    assert text.count("| ❌ regressed |") == 60  # all 60 regressions fit, before anything else
    assert "changed row(s) did not fit in a GitHub comment" in text
    assert text.rstrip().endswith("Unchanged verdicts are left out of this summary (the full list: `--format "
                                  "markdown`).")


def test_a_small_comparison_is_the_full_markdown():
    comparison = _big(3)
    assert render_markdown_summary(comparison) == render_markdown(comparison)
    assert len(render_markdown_summary(_big(600), limit=5_000)) <= 5_000
