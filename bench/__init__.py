"""Benchmarks: ``python -m bench.overhead``, ``bench.scale``, ``bench.profile_overhead``."""
