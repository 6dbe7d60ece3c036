"""Repository-root conftest: lets ``pytest benchmarks`` and ``pytest tests`` run from a checkout.

The kvperf plugin itself is loaded through its ``pytest11`` entry point once the package is
installed (``pip install -e .``); nothing here duplicates it.
"""

pytest_plugins = ["pytester"]
