"""Measurements of meshserial (run from the repository root: ``python -m benchmarks.NAME``)."""
