"""`edgerope bench`: llama-bench-style throughput figures.

ppN: one N-token prompt evaluated in batches from an empty cache; tgN: N tokens decoded one at
a time after a 1-token prompt (the argmax token is fed back; sampling is not timed). A warm-up
run first compiles every kernel (its time is reported as `jit_s`, not in the figures); each
test then runs `repetitions` times and reports mean ± stddev tokens/s.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from . import kernels
from .info import parameter_count
from .profile import Profiler


def _pp(model, n, n_batch, prof=None):
    ids = np.random.default_rng(n).integers(0, model.config.vocab_size, n)
    s = model.new_session(n_ctx=n + 1, n_batch=n_batch)
    s.profiler = prof
    t = time.perf_counter()
    s.eval(ids)
    dt = time.perf_counter() - t
    if prof is not None:
        prof.wall += dt
        prof.tokens += n
    return dt


def _tg(model, n, prof=None):
    s = model.new_session(n_ctx=n + 2)
    bos = model.config.bos_token_id or 0
    logits = s.eval([bos])
    s.profiler = prof
    t = time.perf_counter()
    for _ in range(n):
        logits = s.eval([int(np.argmax(logits))])
    dt = time.perf_counter() - t
    if prof is not None:
        prof.wall += dt
        prof.tokens += n
    return dt


def run_bench(model, n_prompt=(512,), n_gen=(128,), threads=(None,), repetitions: int = 5,
              n_batch: int = 512, profile: bool = False):
    """Returns (records, profiles): llama-bench-like JSON records, and per-test Profilers."""
    records, profiles = [], {}
    size, params = model.weights.nbytes, parameter_count(model)
    for th in threads:
        n_threads = kernels.set_threads(th)
        t0 = time.perf_counter()
        _pp(model, 8, n_batch)
        _tg(model, 2)
        jit_s = time.perf_counter() - t0
        tests = [("pp", n) for n in n_prompt if n > 0] + [("tg", n) for n in n_gen if n > 0]
        for kind, n in tests:
            samples = [(_pp(model, n, n_batch) if kind == "pp" else _tg(model, n))
                       for _ in range(repetitions)]
            ts = [n / s for s in samples]
            rec = dict(model_filename=str(model.path), model_type=model.config.model_type,
                       model_size=size, model_n_params=params, dtype=model.dtype,
                       n_threads=n_threads, n_batch=n_batch,
                       n_prompt=n if kind == "pp" else 0, n_gen=n if kind == "tg" else 0,
                       test=f"{kind}{n}", avg_ts=statistics.fmean(ts),
                       stddev_ts=statistics.stdev(ts) if len(ts) > 1 else 0.0,
                       samples_ts=ts, samples_ns=[int(s * 1e9) for s in samples],
                       jit_s=jit_s)
            records.append(rec)
            if profile:
                prof = Profiler()
                _pp(model, n, n_batch, prof) if kind == "pp" else _tg(model, n, prof)
                profiles[(n_threads, rec["test"])] = prof
    return records, profiles


def markdown(records) -> str:
    lines = ["| model | size | params | dtype | threads | test | t/s |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['model_type']} | {r['model_size'] / 2**20:.1f} MiB | "
                     f"{r['model_n_params'] / 1e6:.1f} M | {r['dtype']} | {r['n_threads']} | "
                     f"{r['test']} | {r['avg_ts']:.2f} ± {r['stddev_ts']:.2f} |")
    return "\n".join(lines)
