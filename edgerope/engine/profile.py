"""Per-operation timing of the forward pass (`--profile`).

A Session with a `Profiler` attached times every kernel call by kind (matmul per tensor kind,
attention, norms, RoPE, activations, residual adds, KV stores, sampling). Timing a call costs
time of its own (two clock reads and the bookkeeping, ~1 us): `own_cost` measures it once a
process, and the table shows it as its own row ("profiler (est.)", calls x that cost), so
that what is left of the wall time, "python overhead", is the forward pass's Python and not
the profiler's. Without a profiler the forward pass pays one extra Python call per kernel,
nothing else.
"""
from __future__ import annotations

import time
from collections import defaultdict


def direct(name, fn, *args):
    fn(*args)


def _noop():
    pass


_own_cost = None


def own_cost() -> float:
    """Seconds a profiled call takes beyond the same call made unprofiled (`direct`): the best
    of five runs of 2000 calls of a no-op each way, measured once a process."""
    global _own_cost
    if _own_cost is None:
        p = Profiler()
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(2000):
                p("x", _noop)
            t1 = time.perf_counter()
            for _ in range(2000):
                direct("x", _noop)
            t2 = time.perf_counter()
            best = min(best, ((t1 - t0) - (t2 - t1)) / 2000)
        _own_cost = max(best, 0.0)
    return _own_cost


class Profiler:
    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.wall = 0.0
        self.tokens = 0

    def __call__(self, name, fn, *args):
        t = time.perf_counter()
        fn(*args)
        self.seconds[name] += time.perf_counter() - t
        self.calls[name] += 1

    def add(self, name, seconds):
        self.seconds[name] += seconds
        self.calls[name] += 1

    def reset(self):
        self.seconds.clear()
        self.calls.clear()
        self.wall, self.tokens = 0.0, 0

    def table(self) -> str:
        """Markdown table: op | ms/token | share | calls/token; then the profiler's own time
        (estimated: calls x own_cost()) and what is left of the wall time (python overhead)."""
        n = max(self.tokens, 1)
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        left = max(self.wall - sum(self.seconds.values()), 0.0)
        mine = min(sum(self.calls.values()) * own_cost(), left) if self.wall > 0 else 0.0
        lines = ["| op | ms/token | share | calls/token |", "|---|---:|---:|---:|"]
        total = self.wall if self.wall > 0 else sum(self.seconds.values()) or 1.0
        for name, s in rows + [("profiler (est.)", mine), ("python overhead", left - mine)]:
            calls = self.calls.get(name, 0) / n
            lines.append(f"| {name} | {s / n * 1e3:.3f} | {100 * s / total:.1f}% | "
                         f"{calls:.2f} |")
        lines.append(f"| total | {total / n * 1e3:.3f} | 100% | |")
        return "\n".join(lines)
