"""Benchmarks: run on demand (`make bench`), never as tests. Each writes its section of BENCHMARKS.md."""
