"""Evaluations and benchmarks (not part of the service)."""
