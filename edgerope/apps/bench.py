"""`edgerope bench`: llama-bench-style throughput figures.

ppN: one N-token prompt evaluated in batches from an empty cache; tgN: N tokens decoded one at
a time after a 1-token prompt (the argmax token is fed back; sampling is not timed). With a
depth d (`-d`, as llama-bench), d context tokens are evaluated first (not timed), so the test
runs against a KV cache holding d tokens: "pp512 @ d1024". A warm-up run first compiles every
kernel (its time is reported as `jit_s`, not in the figures); each test then runs
`repetitions` times and reports mean ± stddev tokens/s. Sweeps: prompt sizes, generation
lengths, thread counts, depths and KV cache types.

Memory, per test (edgerope.system.process_memory right after a repetition, its session
alive; of the repetitions, the one of most anonymous memory): `mem_peak_rss` (the process's peak resident set so far,
file-backed pages included), `mem_rss`, `mem_anonymous` (private memory no file backs: what
the process really takes from the machine's RAM) and `mem_file` (library code and mapped
weights: pages the kernel may drop and read back).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from edgerope import runtime
from edgerope.apps.info import parameter_count
from edgerope.engine.cache import DEFAULT_KV_TYPE
from edgerope.engine.profile import Profiler
from edgerope.system import process_memory

_MEMORY_KEYS = ("rss", "peak_rss", "anonymous", "file")


def _note_memory(mem):
    """Keep in `mem` the edgerope.system.process_memory snapshot of largest anonymous memory
    so far (taken while a test's session, with its KV cache and buffers, is alive)."""
    if mem is not None:
        now = process_memory()
        if now.get("anonymous", 0) >= mem.get("anonymous", 0):
            mem.update(now)


def _context(model, n_ctx, n_batch, depth, kv_type):
    s = model.new_session(n_ctx=n_ctx, n_batch=n_batch, kv_type=kv_type)
    if depth:
        s.eval(np.random.default_rng(depth).integers(0, model.config.vocab_size, depth))
    return s


def _pp(model, n, n_batch, prof=None, depth=0, kv_type=DEFAULT_KV_TYPE, mem=None):
    ids = np.random.default_rng(n).integers(0, model.config.vocab_size, n)
    s = _context(model, depth + n + 1, n_batch, depth, kv_type)
    s.profiler = prof
    t = time.perf_counter()
    s.eval(ids)
    dt = time.perf_counter() - t
    _note_memory(mem)
    if prof is not None:
        prof.wall += dt
        prof.tokens += n
    return dt


def _tg(model, n, prof=None, depth=0, kv_type=DEFAULT_KV_TYPE, mem=None):
    s = _context(model, depth + n + 2, 512, depth, kv_type)
    bos = model.config.bos_token_id or 0
    logits = s.eval([bos])
    s.profiler = prof
    t = time.perf_counter()
    for _ in range(n):
        logits = s.eval([int(np.argmax(logits))])
    dt = time.perf_counter() - t
    _note_memory(mem)
    if prof is not None:
        prof.wall += dt
        prof.tokens += n
    return dt


def run_bench(model, n_prompt=(512,), n_gen=(128,), threads=(None,), repetitions: int = 5,
              n_batch: int = 512, profile: bool = False, depths=(0,),
              kv_types=(DEFAULT_KV_TYPE,)):
    """Returns (records, profiles): llama-bench-like JSON records, and per-test Profilers."""
    records, profiles = [], {}
    size, params = model.weights.nbytes, parameter_count(model)
    for th in threads:
        n_threads = runtime.set_threads(th)
        t0 = time.perf_counter()
        for kv in kv_types:
            _pp(model, 8, n_batch, kv_type=kv)
            _tg(model, 2, kv_type=kv)
        jit_s = time.perf_counter() - t0
        tests = [("pp", n) for n in n_prompt if n > 0] + [("tg", n) for n in n_gen if n > 0]
        for kv in kv_types:
            for d in depths:
                for kind, n in tests:
                    run = _pp if kind == "pp" else _tg
                    extra = (n_batch,) if kind == "pp" else ()
                    mem = {}
                    samples = [run(model, n, *extra, depth=d, kv_type=kv, mem=mem)
                               for _ in range(repetitions)]
                    ts = [n / s for s in samples]
                    test = f"{kind}{n}" + (f" @ d{d}" if d else "")
                    rec = dict(model_filename=str(model.path),
                               model_type=model.config.model_type, model_size=size,
                               model_n_params=params, dtype=model.dtype, kv_type=kv,
                               n_threads=n_threads, n_batch=n_batch,
                               n_prompt=n if kind == "pp" else 0,
                               n_gen=n if kind == "tg" else 0, n_depth=d, test=test,
                               avg_ts=statistics.fmean(ts),
                               stddev_ts=statistics.stdev(ts) if len(ts) > 1 else 0.0,
                               samples_ts=ts, samples_ns=[int(s * 1e9) for s in samples],
                               jit_s=jit_s,
                               **{f"mem_{k}": mem[k] for k in _MEMORY_KEYS if k in mem})
                    records.append(rec)
                    if profile:
                        prof = Profiler()
                        run(model, n, *extra, prof, depth=d, kv_type=kv)
                        profiles[(n_threads, f"{test} {kv}")] = prof
    return records, profiles


def markdown(records) -> str:
    lines = ["| model | size | params | dtype | kv | threads | test | t/s |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['model_type']} | {r['model_size'] / 2**20:.1f} MiB | "
                     f"{r['model_n_params'] / 1e6:.1f} M | {r['dtype']} | {r['kv_type']} | "
                     f"{r['n_threads']} | {r['test']} | {r['avg_ts']:.2f} ± "
                     f"{r['stddev_ts']:.2f} |")
    return "\n".join(lines)
