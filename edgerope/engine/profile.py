"""Per-operation timing of the forward pass (`--profile`).

A Session with a `Profiler` attached times every kernel call by kind (matmul per tensor kind,
attention, norms, RoPE, activations, residual adds, KV stores, sampling); what is left of
the wall time is Python overhead. Without a profiler the forward pass pays one extra Python
call per kernel, nothing else.
"""
from __future__ import annotations

import time
from collections import defaultdict


def direct(name, fn, *args):
    fn(*args)


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
        """Markdown table: op | ms/token | share | calls/token."""
        n = max(self.tokens, 1)
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        other = max(self.wall - sum(self.seconds.values()), 0.0)
        lines = ["| op | ms/token | share | calls/token |", "|---|---:|---:|---:|"]
        total = self.wall if self.wall > 0 else sum(self.seconds.values()) or 1.0
        for name, s in rows + [("python overhead", other)]:
            calls = self.calls.get(name, 0) / n
            lines.append(f"| {name} | {s / n * 1e3:.3f} | {100 * s / total:.1f}% | "
                         f"{calls:.2f} |")
        lines.append(f"| total | {total / n * 1e3:.3f} | 100% | |")
        return "\n".join(lines)
