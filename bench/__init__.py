"""Benchmarks of the pipeline's own cost, run by hand (``python -m bench.pipeline``); never part of CI."""
