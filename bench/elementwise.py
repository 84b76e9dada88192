"""Micro-benchmark of the elementwise kernels a prefill chunk runs between its matmuls, on
Gemma 3 270M's shapes: gated activations, RMSNorm (out of place and in place, as the engine
calls it) and the residual add (in place).

    python bench/elementwise.py [-t 2] [--reps 50]

Prints the best of --reps calls per kernel and shape, in ms (T = 1: a decode row).
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


def best(fn, reps):
    fn()
    b = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        b = min(b, time.perf_counter() - t)
    return b * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    K.set_threads(a.threads)
    rng = np.random.default_rng(0)

    def f(*s):
        return rng.standard_normal(s).astype(np.float32)

    rows = []
    for T in (1, 64, 512):
        gu, out = f(T, 4096), np.empty((T, 2048), np.float32)
        for name, kind in (("SiLU", K.ACT_SILU), ("GELU-tanh", K.ACT_GELU_TANH)):
            rows.append((f"act_mul {name}", f"{T} x 2048",
                         best(lambda: K.act_mul(out, gu, kind), a.reps)))
    for T, n in ((1, 640), (512, 640), (2048, 256), (512, 2048)):
        x, o, w = f(T, n), np.empty((T, n), np.float32), f(1, n)
        rows.append(("rms_norm", f"{T} x {n}", best(lambda: K.rms_norm(o, x, w, 1e-6, True),
                                                     a.reps)))
        rows.append(("rms_norm in place", f"{T} x {n}",
                     best(lambda: K.rms_norm(x, x, w, 1e-6, True), a.reps)))
    for T in (1, 64, 512):
        x, o = f(T, 640), f(T, 640)
        rows.append(("add in place", f"{T} x 640", best(lambda: K.add(x, x, o), a.reps)))
    print(f"{a.threads} threads, best of {a.reps} calls, ms")
    for name, shape, ms in rows:
        print(f"{name:20s} {shape:>12s} {ms:9.4f}")


if __name__ == "__main__":
    main()
