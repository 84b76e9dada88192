"""Float32 products and embeddings, and the logical int8 (Q8_0) weight format's quantizer.

Weight format: a matrix W of N output rows and K inputs is `wq` int8 (N, K) plus `ws` float32
(N, ceil(K / 32)); block b of row n covers columns [32b, min(32b + 32, K)) and
W[n, c] = wq[n, c] * ws[n, c // 32] (`quantize_q8` / `dequantize_q8`). Products with int8 (and
int4) weights run on their packed layout (edgerope.formats.q8, kernels in packed.py).

- `f32_gemv`: one token (decode); bandwidth bound, parallel over row chunks.
- `f32_gemm`: many tokens (prefill); each row chunk dotted against all tokens with a 4x4
  register tile.
"""
import numpy as np

from edgerope.kernels.jit import kernel, prange

QK = 32            # quantization block length (columns per scale); kernels spell it as a literal
_GEMV_ROWS = 32    # rows per parallel chunk in gemv (multiple of 4; one small alloc each)
_GEMM_ROWS = 16    # rows per parallel chunk in gemm and (de)quantization (multiple of 4)
_GEMM_TOKENS = 16  # tokens per cache tile in gemm (multiple of 4)


def q8_blocks(k):
    """Number of scale blocks for K input columns."""
    return (int(k) + QK - 1) // QK


# ----------------------------------------------------------------------------- quantization

@kernel
def _q8_inv(d):
    # float64 then rounded: fastmath (arcp) would make a float32 division a multiply by a
    # rounded reciprocal, an ulp away from the reference
    return np.float32(1.0 / np.float64(d)) if d > 0 else np.float32(0.0)


@kernel
def _q8_round(v):
    # |v| + 0.5 in float64 cannot round up across an integer boundary (it can in float32)
    r = min(np.floor(np.float64(abs(v)) + 0.5), 127.0)
    return np.int8(r if v >= 0 else -r)


@kernel(parallel=True)
def quantize_q8(wq, ws, w):
    """Symmetric per-block int8 quantization of float32 w (N, K) into wq (N, K), ws (N, nb).

    Follows llama.cpp's quantize_row_q8_0_ref: d = max|w_block| / 127 (correctly rounded),
    q = roundf(w * (1 / d)) with the reciprocal rounded to float32, i.e. nearest with ties away
    from zero (not numpy's ties-to-even); d == 0 gives q == 0. Bit-reproducible.
    """
    N, K = w.shape
    nb = (K + 31) // 32
    nfull = K // 32
    nch = (N + _GEMM_ROWS - 1) // _GEMM_ROWS
    for ch in prange(nch):
        lo = ch * _GEMM_ROWS
        hi = min(N, lo + _GEMM_ROWS)
        for n in range(lo, hi):
            for b in range(nb):
                amax = np.float32(0.0)
                if b < nfull:
                    for i in range(32):
                        amax = max(amax, abs(w[n, 32 * b + i]))
                else:
                    for c in range(32 * b, K):
                        amax = max(amax, abs(w[n, c]))
                ws[n, b] = np.float32(np.float64(amax) / 127.0)
        n = lo
        while n + 4 <= hi:  # four rows per pass: see _dequant_rows
            for b in range(nfull):
                i0 = _q8_inv(ws[n, b])
                i1 = _q8_inv(ws[n + 1, b])
                i2 = _q8_inv(ws[n + 2, b])
                i3 = _q8_inv(ws[n + 3, b])
                o = 32 * b
                for i in range(32):
                    wq[n, o + i] = _q8_round(w[n, o + i] * i0)
                    wq[n + 1, o + i] = _q8_round(w[n + 1, o + i] * i1)
                    wq[n + 2, o + i] = _q8_round(w[n + 2, o + i] * i2)
                    wq[n + 3, o + i] = _q8_round(w[n + 3, o + i] * i3)
            n += 4
        for n in range(n, hi):
            for c in range(32 * nfull):
                wq[n, c] = _q8_round(w[n, c] * _q8_inv(ws[n, c // 32]))
        for n in range(lo, hi):
            for c in range(32 * nfull, K):
                wq[n, c] = _q8_round(w[n, c] * _q8_inv(ws[n, nfull]))


@kernel
def _dequant_rows(out, wq, ws, lo, hi):
    """out[n - lo] = dequantized row n for n in [lo, hi)."""
    K = wq.shape[1]
    nfull = K // 32
    n = lo
    # four rows per pass: a one-row 32-lane body gets fully unrolled and then not vectorized;
    # this body is kept as a loop, which LLVM vectorizes
    while n + 4 <= hi:
        r = n - lo
        for b in range(nfull):
            s0 = ws[n, b]
            s1 = ws[n + 1, b]
            s2 = ws[n + 2, b]
            s3 = ws[n + 3, b]
            o = 32 * b
            for i in range(32):
                out[r, o + i] = np.float32(wq[n, o + i]) * s0
                out[r + 1, o + i] = np.float32(wq[n + 1, o + i]) * s1
                out[r + 2, o + i] = np.float32(wq[n + 2, o + i]) * s2
                out[r + 3, o + i] = np.float32(wq[n + 3, o + i]) * s3
        n += 4
    for n in range(n, hi):
        r = n - lo
        for c in range(32 * nfull):
            out[r, c] = np.float32(wq[n, c]) * ws[n, c // 32]
    for n in range(lo, hi):
        for c in range(32 * nfull, K):
            out[n - lo, c] = np.float32(wq[n, c]) * ws[n, nfull]


@kernel(parallel=True)
def dequantize_q8(out, wq, ws):
    """out (N, K) float32 = wq * ws broadcast over blocks."""
    N = wq.shape[0]
    for ch in prange((N + _GEMM_ROWS - 1) // _GEMM_ROWS):
        lo = ch * _GEMM_ROWS
        hi = min(N, lo + _GEMM_ROWS)
        _dequant_rows(out[lo:hi], wq, ws, lo, hi)


# ----------------------------------------------------------------------------- embeddings

@kernel(parallel=True)
def f32_embed(out, ids, w, scale):
    """out (T, K) = w[ids[t]] * scale."""
    K = w.shape[1]
    sc = np.float32(scale)
    for t in prange(ids.shape[0]):
        n = ids[t]
        for c in range(K):
            out[t, c] = w[n, c] * sc


# --------------------------------------------------------------------------- decode (one token)

@kernel(parallel=True)
def f32_gemv(out, x, w):
    """out (N,) = w @ x for float32 w (N, K)."""
    N, K = w.shape
    nch = (N + _GEMV_ROWS - 1) // _GEMV_ROWS
    for ch in prange(nch):
        lo = ch * _GEMV_ROWS
        hi = min(N, lo + _GEMV_ROWS)
        n = lo
        while n + 4 <= hi:
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for k in range(K):
                xv = x[k]
                a0 += w[n, k] * xv
                a1 += w[n + 1, k] * xv
                a2 += w[n + 2, k] * xv
                a3 += w[n + 3, k] * xv
            out[n] = a0
            out[n + 1] = a1
            out[n + 2] = a2
            out[n + 3] = a3
            n += 4
        while n < hi:
            a = np.float32(0.0)
            for k in range(K):
                a += w[n, k] * x[k]
            out[n] = a
            n += 1


# ------------------------------------------------------------------------- prefill (many tokens)

@kernel
def _panel(out, x, w, wlo, n0, nr):
    """out[:, n0:n0+nr] = x @ w[wlo:wlo+nr].T, tiled so x rows stay in cache.

    The 4-row x 4-token register tile makes each loaded w / x vector feed four FMAs; LLVM
    vectorizes every k loop as a set of independent float reductions (needs fastmath reassoc).
    """
    T, K = x.shape
    for t0 in range(0, T, _GEMM_TOKENS):
        t1 = min(T, t0 + _GEMM_TOKENS)
        r = 0
        while r + 4 <= nr:
            ra = wlo + r
            t = t0
            while t + 4 <= t1:
                a00 = a01 = a02 = a03 = np.float32(0.0)
                a10 = a11 = a12 = a13 = np.float32(0.0)
                a20 = a21 = a22 = a23 = np.float32(0.0)
                a30 = a31 = a32 = a33 = np.float32(0.0)
                for k in range(K):
                    x0 = x[t, k]
                    x1 = x[t + 1, k]
                    x2 = x[t + 2, k]
                    x3 = x[t + 3, k]
                    w0 = w[ra, k]
                    w1 = w[ra + 1, k]
                    w2 = w[ra + 2, k]
                    w3 = w[ra + 3, k]
                    a00 += w0 * x0
                    a01 += w1 * x0
                    a02 += w2 * x0
                    a03 += w3 * x0
                    a10 += w0 * x1
                    a11 += w1 * x1
                    a12 += w2 * x1
                    a13 += w3 * x1
                    a20 += w0 * x2
                    a21 += w1 * x2
                    a22 += w2 * x2
                    a23 += w3 * x2
                    a30 += w0 * x3
                    a31 += w1 * x3
                    a32 += w2 * x3
                    a33 += w3 * x3
                c = n0 + r
                out[t, c] = a00
                out[t, c + 1] = a01
                out[t, c + 2] = a02
                out[t, c + 3] = a03
                out[t + 1, c] = a10
                out[t + 1, c + 1] = a11
                out[t + 1, c + 2] = a12
                out[t + 1, c + 3] = a13
                out[t + 2, c] = a20
                out[t + 2, c + 1] = a21
                out[t + 2, c + 2] = a22
                out[t + 2, c + 3] = a23
                out[t + 3, c] = a30
                out[t + 3, c + 1] = a31
                out[t + 3, c + 2] = a32
                out[t + 3, c + 3] = a33
                t += 4
            while t < t1:
                a0 = a1 = a2 = a3 = np.float32(0.0)
                for k in range(K):
                    xv = x[t, k]
                    a0 += w[ra, k] * xv
                    a1 += w[ra + 1, k] * xv
                    a2 += w[ra + 2, k] * xv
                    a3 += w[ra + 3, k] * xv
                c = n0 + r
                out[t, c] = a0
                out[t, c + 1] = a1
                out[t, c + 2] = a2
                out[t, c + 3] = a3
                t += 1
            r += 4
        while r < nr:
            for t in range(t0, t1):
                a = np.float32(0.0)
                for k in range(K):
                    a += w[wlo + r, k] * x[t, k]
                out[t, n0 + r] = a
            r += 1


@kernel(parallel=True)
def f32_gemm(out, x, w):
    """out (T, N) = x @ w.T for x (T, K) and float32 w (N, K)."""
    N = w.shape[0]
    nch = (N + _GEMM_ROWS - 1) // _GEMM_ROWS
    for ch in prange(nch):
        lo = ch * _GEMM_ROWS
        _panel(out, x, w, lo, lo, min(N, lo + _GEMM_ROWS) - lo)
