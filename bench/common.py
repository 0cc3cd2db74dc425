"""What every benchmark shares: the machine's description, medians, peak memory, BENCHMARKS.md sections.

Each benchmark owns one section of BENCHMARKS.md between ``<!-- bench:NAME -->`` markers and
rewrites only that section, with the machine, the date, the command and the median of its runs.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
SHARED_DATA = Path(os.environ.get("SHELF_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = psutil.virtual_memory().total / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {memory_gib:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass
class PeakMemory:
    """Samples this process's RSS in a thread; ``peak_mib`` is the highest seen above the start."""

    interval: float = 0.02

    def __enter__(self) -> PeakMemory:
        self._proc = psutil.Process()
        self.start_mib = self._proc.memory_info().rss / 2**20
        self.peak_mib = self.start_mib
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._proc.memory_info().rss / 2**20)
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, self._proc.memory_info().rss / 2**20)


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def write_section(name: str, title: str, body: str, command: str) -> None:
    """Replace (or append) this benchmark's section of BENCHMARKS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"- machine: {machine()}\n- date: {stamp}\n- command: `{command}`\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->"
    )
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nWritten by `make bench`; each section by its own script in `bench/`.\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)
    print(section)


def command_line() -> str:
    return "python -m bench " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("__main__.py") else " ".join(["python", *sys.argv])
