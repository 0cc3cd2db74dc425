"""`python -m bench [NAME ...]`: run the named benchmarks (default: all) and update BENCHMARKS.md."""

from __future__ import annotations

import importlib
import sys

# Explicit registry: name → module with a main(argv) function.
BENCHMARKS = {
    "ingest": "bench.bench_ingest",
    "evaluation": "bench.bench_evaluation",
    "quality": "bench.bench_quality",
    "sasrec": "bench.bench_sasrec",
    "ann": "bench.bench_ann",
}


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"== bench {name}", flush=True)
        module.main([a for a in argv if a.startswith("-")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
