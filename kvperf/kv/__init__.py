"""What a cache holds: the KV-size formula per layer type, the measurement of real caches, capacity
("does it fit") and small configs of every family.

The public API is ``kvperf``'s own (``kvperf/__init__.py``)."""
