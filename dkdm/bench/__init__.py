"""Benchmarks and experiment reports; results go to docs/."""
