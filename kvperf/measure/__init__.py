"""One generate call, measured: prompts, the harness and its clocks, peak memory, FLOPs, the pytest-
benchmark runner, progress and time budgets, and out-of-memory handling.

The public API is ``kvperf``'s own (``kvperf/__init__.py``)."""
