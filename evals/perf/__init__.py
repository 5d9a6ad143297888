"""Performance benchmarks: `python -m evals.perf.bench_ingest`."""
