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
    "serving": "bench.bench_serving",
    "twostage": "bench.bench_twostage",
    "rees46-windows": "bench.bench_rees46_windows",
    "movielens-windows": "bench.bench_movielens_windows",
    "scale": "bench.bench_scale",
}


def main(argv: list[str]) -> int:
    """Leading arguments that name benchmarks pick them; everything after goes to each one."""
    names: list[str] = []
    while argv and not argv[0].startswith("-"):
        if argv[0] not in BENCHMARKS:
            print(f"unknown benchmark {argv[0]!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        names.append(argv.pop(0))
    for name in names or list(BENCHMARKS):
        module = importlib.import_module(BENCHMARKS[name])
        print(f"== bench {name}", flush=True)
        module.main(list(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
