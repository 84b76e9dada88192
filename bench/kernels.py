"""Micro-benchmark of the int8 matmul kernels on real Gemma 3 270M shapes: float32 vs packed.

    python bench/kernels.py [--threads 1,2] [--tokens 1,512] [--budget 0.3] [--head-gemm]
                            [--path vnni|avxvnni|portable] [--only SUBSTRING]

Prints best-of timings as GB/s of int8 weights (N*K bytes / s, the decode figure of merit) and
GFLOP/s (2*N*K*T / s). "old" = f32_gemv / f32_gemm on the dequantized float32 matrix; "new" =
quantize_act + q8p_gemv / q8p_gemm on the packed layout (activation quantization included).
The 262144 x 640 output head runs at T=1 only unless --head-gemm (its T=512 output is 512 MB).
--path times another of the kernel paths the CPU supports (default: the dispatched one).
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import edgerope.kernels as K  # noqa: E402
from edgerope.formats import q8  # noqa: E402
from edgerope.kernels import packed, simd  # noqa: E402

SHAPES = [  # (name, N outputs, K inputs)
    ("head 640->262144", 262144, 640),
    ("qkv/gate 640->2048", 2048, 640),
    ("down 2048->640", 640, 2048),
    ("o 1024->640", 640, 1024),
    ("qkv 640->1536", 1536, 640),
]


def best_of(fn, budget, min_reps=3):
    fn()  # warm up (and compile)
    best, spent, reps = float("inf"), 0.0, 0
    while reps < min_reps or spent < budget:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best


def weights(rng, n, k):
    wq = rng.integers(-127, 128, size=(n, k), dtype=np.int8)
    ws = (rng.random((n, K.q8_blocks(k)), dtype=np.float32) * 0.01).astype(np.float32)
    return wq, ws


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--tokens", default="1,512")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds per measurement")
    ap.add_argument("--head-gemm", action="store_true")
    ap.add_argument("--only", default="", help="substring filter on shape names")
    ap.add_argument("--path", default=simd.MODE, choices=simd.available())
    a = ap.parse_args()
    gemv_new, gemm_new = packed.KERNELS["q8"][a.path]
    threads = [int(v) for v in a.threads.split(",")]
    tokens = [int(v) for v in a.tokens.split(",")]
    print(f"new = {a.path} kernels; load average {os.getloadavg()[0]:.2f}; best-of timings")
    print(f"{'shape':22s} {'T':>4s} {'thr':>3s} {'old ms':>9s} {'new ms':>9s} "
          f"{'old GB/s':>9s} {'new GB/s':>9s} {'old GF/s':>9s} {'new GF/s':>9s} {'x':>5s}")
    rng = np.random.default_rng(0)
    for name, n, k in SHAPES:
        if a.only and a.only not in name:
            continue
        wq, ws = weights(rng, n, k)
        t0 = time.perf_counter()
        wp, wsp = q8.pack_q8(wq, ws)
        pack_s = time.perf_counter() - t0
        w = np.empty((n, k), np.float32)
        K.dequantize_q8(w, wq, ws)
        for T in tokens:
            if T > 1 and n > 100000 and not a.head_gemm:
                continue
            x = rng.standard_normal((T, k)).astype(np.float32)
            out_old = np.empty((T, n), np.float32)
            out_new = np.empty((T, n), np.float32)
            xq, xs, xsum = packed.act_buffers(T, k)

            if T == 1:
                def old():
                    K.f32_gemv(out_old[0], x[0], w)

                def new():
                    packed.quantize_act(xq, xs, xsum, x)
                    gemv_new(out_new[0], xq, xs, xsum, wp, wsp, n)
            else:
                def old():
                    K.f32_gemm(out_old, x, w)

                def new():
                    packed.quantize_act(xq, xs, xsum, x)
                    gemm_new(out_new, xq, xs, xsum, wp, wsp, n)
            for th in threads:
                K.set_threads(th)
                to, tn = best_of(old, a.budget), best_of(new, a.budget)
                gb, gf = n * k / 1e9, 2.0 * n * k * T / 1e9
                print(f"{name:22s} {T:4d} {th:3d} {to * 1e3:9.3f} {tn * 1e3:9.3f} "
                      f"{gb / to:9.1f} {gb / tn:9.1f} {gf / to:9.1f} {gf / tn:9.1f} "
                      f"{to / tn:5.2f}", flush=True)
            rel = np.abs(out_new - out_old).max() / max(np.abs(out_old).max(), 1e-30)
            if rel > 1e-2:
                print(f"  WARNING: new vs old max rel diff {rel:.3g}")
        print(f"  pack_q8 {n}x{k}: {pack_s * 1e3:.1f} ms (first call includes compilation)")


if __name__ == "__main__":
    main()
