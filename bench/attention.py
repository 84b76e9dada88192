"""Micro-benchmark of prefill attention: the per-query kernel (attend.attention) against the
float tiles (attend_tiles.attention_tiles) on one layer's shapes, float32 cache, causal.

    python bench/attention.py [-t 2] [--units 4]

Prints the best of five calls of each, per shape (T queries after S cached keys, Hq query
heads over Hkv kv heads of dim D): Gemma 3 270M's layer (4 / 1 x 256) at 512 new tokens,
with and without 512 cached ones, and Llama-style 64-dim heads.
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
    a = ap.parse_args()
    K.set_threads(a.threads)
    U = a.units or 2 * a.threads
    rng = np.random.default_rng(0)
    for T, S, Hq, Hkv, D in SHAPES:
        f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        q, kc, vc, kn, vn = f(T, Hq, D), f(S, Hkv, D), f(S, Hkv, D), f(T, Hkv, D), f(T, Hkv, D)
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


if __name__ == "__main__":
    main()
