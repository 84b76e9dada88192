"""Micro-benchmark of the packed matmul cores per block format (GEMV and GEMM), on random
blocks of a chosen shape: in cache (small N x K) or streaming from memory (large).

    python bench/formats.py [--formats q8,q5_0,q4_k,q6_k] [-n 1024] [-k 1024] [-t 1]
                            [--tokens 1] [--file-backed] [--reps 7]

Prints the best of --reps timings as GB/s of packed weights (weights + scales read once a
call) and, for GEMM (--tokens > 1), GOP/s (2 N K T). --file-backed keeps the weights in a
memory-mapped file under $TMPDIR (as the native format serves them: page cache, no
anonymous copy) instead of a numpy allocation. Values are random codes with unit fp16
scales: timing only, nothing is checked (tests/test_ggml_blocks.py does that).
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.join(_HERE, ".."))

from edgerope import kernels as K  # noqa: E402
from edgerope.kernels import layout, packed, simd  # noqa: E402


def operands(fmt, n, k, t, file_backed, tmp):
    rng = np.random.default_rng(0)
    geo = layout.GEOMETRY[fmt]
    g, nb = -(-n // 16), -(-k // geo.qk)
    wp = rng.integers(0, 256, (g, nb, geo.block_bytes), dtype=np.uint8)
    if geo.act == "q8_k" and fmt != "q6_k":  # 6-bit scales and mins
        wp[:, :, geo.block_bytes - 256:] &= 63
    if file_backed:
        path = os.path.join(tmp, f"{fmt}.bin")
        wp.tofile(path)
        del wp
        wp = np.memmap(path, np.uint8, "r", shape=(g, nb, geo.block_bytes))
    wsp = np.full((g, nb, geo.wsp_rows), 0x3C00, np.uint16)  # fp16 1.0
    x = rng.standard_normal((t, k)).astype(np.float32)
    xq, xs, xsum = layout.act_buffers(t, k, geo.act)
    (packed.quantize_act_k if geo.act == "q8_k" else packed.quantize_act)(xq, xs, xsum, x)
    return wp, wsp, xq, xs, xsum


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--formats", default="q8,q4,q5_0,q4_k,q5_k,q6_k")
    ap.add_argument("-n", type=int, default=1024, help="output rows")
    ap.add_argument("-k", type=int, default=1024, help="input columns")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=1, help="1: GEMV, more: GEMM")
    ap.add_argument("--file-backed", action="store_true")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    K.set_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in a.formats.split(","):
            wp, wsp, xq, xs, xsum = operands(fmt, a.n, a.k, a.tokens, a.file_backed, tmp)
            gemv, gemm = packed.KERNELS[fmt][simd.MODE]
            out = np.zeros((a.tokens, a.n), np.float32)
            call = ((lambda: gemv(out[0], xq, xs, xsum, wp, wsp, a.n)) if a.tokens == 1
                    else (lambda: gemm(out, xq, xs, xsum, wp, wsp, a.n)))
            call()
            nbytes = wp.nbytes + wsp.nbytes
            best = float("inf")
            for _ in range(a.reps):
                reps = max(1, int(2e8 // nbytes))
                t0 = time.perf_counter()
                for _ in range(reps):
                    call()
                best = min(best, (time.perf_counter() - t0) / reps)
            ops = f"  {2 * a.n * a.k * a.tokens / best / 1e9:7.1f} GOP/s" if a.tokens > 1 else ""
            print(f"{fmt:6s} {a.n}x{a.k} T={a.tokens} threads={a.threads} {simd.MODE} "
                  f"{nbytes / 1e6:8.2f} MB {best * 1e6:10.1f} us {nbytes / best / 1e9:7.1f} GB/s"
                  f"{ops}")


if __name__ == "__main__":
    main()
