"""`edgerope bench`: llama-bench-style throughput figures.

ppN: one N-token prompt evaluated in batches from an empty cache; tgN: N tokens decoded one at
a time after a 1-token prompt (the argmax token is fed back; sampling is not timed). With a
depth d (`-d`, as llama-bench), d context tokens are evaluated first (not timed), so the test
runs against a KV cache holding d tokens: "pp512 @ d1024". A warm-up run first compiles every
kernel (its time is reported as `jit_s`, not in the figures); each test then runs
`repetitions` times and reports mean ± stddev tokens/s. Sweeps: prompt sizes, generation
lengths, thread counts, depths and KV cache types.

Roofline, per tg test: the weight bytes a decoded token reads (ModelWeights.bytes_per_token:
every matrix once, one row of a looked-up embedding) plus its KV cache's, times tokens/s, is
the read bandwidth decoding achieved (`gbps`); against this machine's own read bandwidth
(`read_bandwidth`, measured once per CPU model and thread count and cached), `roofline_pct`
says how near the memory limit decoding runs.

Memory, per test (edgerope.system.process_memory right after a repetition, its session
alive; of the repetitions, the one of most anonymous memory): `mem_peak_rss` (the process's peak resident set so far,
file-backed pages included), `mem_rss`, `mem_anonymous` (private memory no file backs: what
the process really takes from the machine's RAM) and `mem_file` (library code and mapped
weights: pages the kernel may drop and read back).
"""
from __future__ import annotations

import json
import os
import statistics
import time

import numpy as np

from edgerope import runtime
from edgerope.apps.info import parameter_count
from edgerope.engine.cache import DEFAULT_KV_TYPE, kv_bytes
from edgerope.engine.profile import Profiler
from edgerope.system import cpu_model, mem_available, process_memory

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


_PROBE_BYTES = 512 << 20  # far beyond any L3: the probe streams from memory


def _cache_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "edgerope", "bandwidth.json")


def read_bandwidth(threads: int, remeasure: bool = False) -> float:
    """This machine's read bandwidth in GB/s on `threads` kernel threads: the best of five
    passes of kernels.stream_sum over 512 MiB (or a quarter of the available memory),
    measured once and kept in ~/.cache/edgerope/bandwidth.json (per CPU model and thread
    count; `remeasure` measures again)."""
    from edgerope import kernels
    key = f"{cpu_model()} | {threads} threads"
    path = _cache_file()
    known = {}
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        pass
    if not remeasure and isinstance(known.get(key), (int, float)):
        return float(known[key])
    size = _PROBE_BYTES
    avail = mem_available()
    if avail:
        size = max(64 << 20, min(size, avail // 4))
    a = np.ones(size // 8, np.uint64)  # touched: every page resident
    kernels.stream_sum(a[:1024])  # compiled (or loaded) before timing
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        kernels.stream_sum(a)
        best = min(best, time.perf_counter() - t)
    gbps = a.nbytes / best / 1e9
    known[key] = round(gbps, 2)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(known, f, indent=1)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # measured again next time
    return gbps


def run_bench(model, n_prompt=(512,), n_gen=(128,), threads=(None,), repetitions: int = 5,
              n_batch: int = 512, profile: bool = False, depths=(0,),
              kv_types=(DEFAULT_KV_TYPE,)):
    """Returns (records, profiles): llama-bench-like JSON records, and per-test Profilers."""
    records, profiles = [], {}
    size, params = model.weights.nbytes, parameter_count(model)
    moe = model.config.moe
    per_token = model.weights.bytes_per_token(moe.top_k if moe is not None else None)
    for th in threads:
        n_threads = runtime.set_threads(th)
        ceiling = read_bandwidth(n_threads) if any(n > 0 for n in n_gen) else None
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
                    if kind == "tg":  # the roofline: bytes a token reads vs the machine's
                        # the KV cache of the average token (d + 1 + n / 2 cached keys)
                        kv_read = kv_bytes(model.config, d + 1 + n // 2, kv)
                        gbps = (per_token + kv_read) * rec["avg_ts"] / 1e9
                        rec.update(weight_bytes_per_token=per_token, kv_bytes_per_token=kv_read,
                                   gbps=gbps, bandwidth_gbps=ceiling,
                                   roofline_pct=100 * gbps / ceiling)
                    records.append(rec)
                    if profile:
                        prof = Profiler()
                        run(model, n, *extra, prof, depth=d, kv_type=kv)
                        profiles[(n_threads, f"{test} {kv}")] = prof
    return records, profiles


def markdown(records) -> str:
    """llama-bench's table, with the roofline of tg tests: GB/s read and % of the measured
    read bandwidth."""
    lines = ["| model | size | params | dtype | kv | threads | test | t/s | GB/s (% of read bw) |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in records:
        roof = (f"{r['gbps']:.1f} ({r['roofline_pct']:.0f}% of {r['bandwidth_gbps']:.1f})"
                if "gbps" in r else "")
        lines.append(f"| {r['model_type']} | {r['model_size'] / 2**20:.1f} MiB | "
                     f"{r['model_n_params'] / 1e6:.1f} M | {r['dtype']} | {r['kv_type']} | "
                     f"{r['n_threads']} | {r['test']} | {r['avg_ts']:.2f} ± "
                     f"{r['stddev_ts']:.2f} | {roof} |")
    return "\n".join(lines)
