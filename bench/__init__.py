"""Benchmarks and the long soak: `make bench` (python -m bench.run) and python -m bench.soak."""
