"""Benchmarks: speed and memory of mixers and models (`python -m lra.bench.<name>`)."""
