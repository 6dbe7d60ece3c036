"""Comparing runs: the environment fingerprint, baselines and result files, statistics, verdicts, A/B
turns, the output fingerprint, and their rendering and export.

The public API is ``kvperf``'s own (``kvperf/__init__.py``)."""
