"""Reports of the experiments: tables, plots, power-law fits, the terminal summary and the checks of
results against the physics.

The public API is ``kvperf``'s own (``kvperf/__init__.py``)."""
