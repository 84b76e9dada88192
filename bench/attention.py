"""Micro-benchmark of attention on one layer's shapes, causal, head-major caches.

    python bench/attention.py [-t 2] [--units 4]
    python bench/attention.py --decode [-t 2] [-s 1024] [--kv-type f32,f16]

Prefill: the per-query kernel (attend.attention) against the float tiles
(attend_tiles.attention_tiles), best of five calls each, per shape (T queries after S cached
keys, Hq query heads over Hkv kv heads of dim D): Gemma 3 270M's layer (4 / 1 x 256) at 512
new tokens, with and without 512 cached ones, and Llama-style 64-dim heads.
--decode: one query after S cached keys (attend.attention_decode, the engine's scratch
shape), Gemma 3 270M's layer and the 1B llama's (32 / 8 x 64): median of 100 calls with the
cache in memory (cold: 512 MiB read between calls, as the weights stream between a layer's
attention calls in the engine) and best of 200 with it in cache (hot); with several
--kv-type (float32, fp16) the types' calls alternate, on the same values.
"""
import argparse
import os
import sys
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, ".."))

from edgerope import kernels as K  # noqa: E402

SHAPES = [(512, 0, 4, 1, 256), (512, 512, 4, 1, 256), (128, 0, 32, 4, 64), (512, 0, 32, 8, 64)]


def best(fn, n=5):
    fn()
    b = float("inf")
    for _ in range(n):
        t = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t)
    return b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--units", type=int, default=0, help="work units (default 2 x threads)")
    ap.add_argument("--decode", action="store_true", help="one query (T = 1) against -s keys")
    ap.add_argument("-s", "--slots", type=int, default=1024, help="--decode: cached keys")
    ap.add_argument("--kv-type", default="f32", help="--decode: cache types, f32 and / or f16")
    a = ap.parse_args()
    K.set_threads(a.threads)
    if a.decode:
        kinds = [k.strip() for k in a.kv_type.split(",") if k.strip()]
        if not kinds or set(kinds) - {"f32", "f16"}:
            sys.exit(f"--kv-type: f32 and / or f16, got {a.kv_type!r}")
        return decode(a.slots, kinds)
    U = a.units or 2 * a.threads
    rng = np.random.default_rng(0)
    for T, S, Hq, Hkv, D in SHAPES:
        f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        q, kc, vc, kn, vn = f(T, Hq, D), f(Hkv, S, D), f(Hkv, S, D), f(T, Hkv, D), f(T, Hkv, D)
        ones = np.ones((1, 1), np.float32)
        cache = (kc, vc, ones, ones, np.arange(S, dtype=np.int64))
        new = (kn, vn, np.arange(S, S + T, dtype=np.int64))
        params = (D ** -0.5, 0, 0.0)
        out, ref = np.zeros((T, Hq, D), np.float32), np.zeros((T, Hq, D), np.float32)
        scratch = np.zeros((16, S + T + Hq * D), np.float32)
        stage = np.zeros((U, K.att_stage_len(D, D)), np.float32)
        rows = np.zeros((2, T * Hq), np.float32)
        offs = np.zeros((U, 3, K.ATT_MAX_ROWS), np.int64)
        old = best(lambda: K.attention(ref, q, cache, new, params, scratch))
        new_t = best(lambda: K.attention_tiles(out, q, cache, new, params, stage, rows, offs))
        err = float(np.abs(out - ref).max())
        print(f"T={T} S={S} Hq={Hq} Hkv={Hkv} D={D}: per-query {old * 1e3:.2f} ms, tiles "
              f"{new_t * 1e3:.2f} ms ({old / new_t:.2f}x), max |diff| {err:.1e}")


def decode(S, kinds):
    rng = np.random.default_rng(0)
    evict = np.ones(512 << 20, np.uint8)  # 512 MiB read between calls: more than any L3
    as_kv = {"f32": lambda a: a, "f16": lambda a: a.astype(np.float16).view(np.uint16)}
    for Hq, Hkv, D in ((4, 1, 256), (32, 8, 64)):
        f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        q, kc, vc, kn, vn = f(1, Hq, D), f(Hkv, S, D), f(Hkv, S, D), f(1, Hkv, D), f(1, Hkv, D)
        ones = np.ones((1, 1, 1), np.float32)
        new = (kn, vn, np.array([S], np.int64))
        params = (D ** -0.5, 0, 0.0)
        out = np.zeros((1, Hq, D), np.float32)
        scratch = np.zeros((16, S + 512 + Hq * D), np.float32)  # as a session's
        runs = {}
        for kind in kinds:
            cache = (as_kv[kind](kc), as_kv[kind](vc), ones, ones, np.arange(S, dtype=np.int64))
            runs[kind] = lambda c=cache: K.attention_decode(out, q, c, new, params, scratch, S)
        hot = {kind: float("inf") for kind in kinds}
        cold = {kind: [] for kind in kinds}
        for kind in kinds:
            runs[kind]()
        for _ in range(200):
            for kind in kinds:
                t = time.perf_counter()
                runs[kind]()
                hot[kind] = min(hot[kind], time.perf_counter() - t)
        for _ in range(100):
            for kind in kinds:
                evict.max()
                t = time.perf_counter()
                runs[kind]()
                cold[kind].append(time.perf_counter() - t)
        for kind in kinds:
            print(f"decode S={S} Hq={Hq} Hkv={Hkv} D={D} {kind}: cold "
                  f"{np.median(cold[kind]) * 1e6:.1f} us, hot {hot[kind] * 1e6:.1f} us")


if __name__ == "__main__":
    main()
