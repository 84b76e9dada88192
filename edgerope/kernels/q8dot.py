"""Integer-dot int8 matmul: weights packed for vpdpbusd, activations quantized per 32-block.

Packed weight format, built once at load by `pack_q8(wq, ws) -> (wp, wsp)` from the Q8 format
of edgerope.kernels.matmul (wq int8 (N, K), ws float32 (N, nb), nb = ceil(K / 32)):

- rows are grouped by 16: G = ceil(N / 16) groups (missing rows are zero, scale 0);
- `wp` uint8 (G, nb, 512), 64-byte aligned: block b of group g holds columns [32b, 32b + 32)
  of rows 16g..16g+15 as [k4 step s = 0..7][row r = 0..15][4 consecutive columns], i.e.
  wp[g, b, 64s + 4r + i] = wq[16g + r, 32b + 4s + i] + 128 (columns >= K hold 128, i.e. 0).
  One 64-byte load feeds one vpdpbusd: 16 rows x 4 columns.
- `wsp` uint16 (G, nb, 16), 32 bytes a block: IEEE fp16 bit patterns (numba cannot type
  float16 arrays; numpy reads them with .view(np.float16)), wsp[g, b, r] = ws[16g + r, b]
  rounded to fp16 to nearest even (llama.cpp's GGML_FP32_TO_FP16). The q bytes are computed
  from the float32 scale, so a matrix from `quantize_q8` packs into exactly llama.cpp's Q8_0
  (q from the float32 d, d stored as fp16), and a GGUF Q8_0 tensor (fp16 scales) packs
  bit for bit. A scale that is not finite in fp16 (|w| >= 127 * 65520, about 8.3e6, or not
  finite) raises ScaleRangeError; subnormal fp16 scales are kept exactly.

576 + 32 bytes per 512 weights: 8.5 bits a weight, as Q8_0 (34 bytes per 32). Weights are
stored offset by +128 (unsigned) because vpdpbusd multiplies unsigned by signed bytes:
sum((w + 128) * x) = sum(w * x) + 128 * sum(x), and the correction needs only the activation
block sums. Same bytes as wq / ws (scales as fp16) up to the padding (rows to 16, columns
to 32).

Activations: `quantize_act(xq, xs, xsum, x)` turns x float32 (T, K) into xq int8 (T, 32 nb)
(zero padded), xs float32 (T, nb) and xsum int32 (T, nb) (block sums of xq), with the
rounding of llama.cpp's quantize_row_q8_0 reference (= `quantize_q8`). Once per matmul input;
several matrices with the same input (q|k|v) share it.

Products, all `(out, xq, xs, xsum, wp, wsp, n_out)`, output first:
- `q8p_gemv`: out (n_out,) for one token, row 0 of xq / xs / xsum (pass xq[t:t+1] etc.);
- `q8p_gemm`: out (T, >= n_out) for T = out.shape[0] tokens (rows may be strided views).
out[t, n] = sum_b float(idot[t, n, b]) * (ws16[n, b] * xs[t, b]) accumulated over blocks in
order with one fused multiply-add each, idot being the exact integer block dot and ws16 the
fp16 scale widened to float32 (exactly). Every path computes exactly these numbers, so
results are bit-identical between GEMV and GEMM rows, thread counts, and paths: "vnni" (AVX-512 VNNI), "avxvnni" (256-bit VNNI), "sdot" (AArch64
dot product), "portable" (generic
vector IR, float32 FMAs on the exact integers; any CPU). `simd.MODE` picks the path at import
(env EDGEROPE_SIMD overrides); `KERNELS[mode]` and the `*_vnni` / `*_avxvnni` / `*_portable`
names reach the others (call only modes in simd.available()).

Compared with q8_gemv / q8_gemm (float activations, float32 scales) the activation rounding
adds about 0.5% relative RMS error on Gaussian inputs, more for blocks holding outliers, and
the fp16 scales at most 2^-11 relative per block -- what llama.cpp does for Q8_0 weights too.

Int4 weights (Q4_0) use the same cores through edgerope.kernels.q4dot.
"""
import numpy as np

from edgerope.kernels import simd
from edgerope.kernels.half import h2f
from edgerope.kernels.jit import kernel, prange
from edgerope.kernels.matmul import _q8_inv, _q8_round

ROWS = 16          # output rows per group (one zmm of int32 / float32 lanes)
QK = 32            # columns per block (one scale)
BLOCK_BYTES = 512  # ROWS * QK
_GEMM_GROUPS = 4   # groups per parallel chunk in gemm: their weights stay in L2 ...
_GEMM_TOKENS = 64  # ... while tokens stream through in blocks of this many


def packed_shape(n, k):
    """(G, nb): row groups and column blocks of a packed (n, k) matrix."""
    return (int(n) + ROWS - 1) // ROWS, (int(k) + QK - 1) // QK


def _aligned_empty(shape, dtype, align=64):
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + size].view(dtype).reshape(shape)


def aligned_copy(a, align=64):
    """A copy of `a` whose data starts on an `align`-byte boundary."""
    out = _aligned_empty(a.shape, a.dtype, align)
    out[...] = a
    return out


# ----------------------------------------------------------------------------- packing

@kernel(parallel=True)
def _pack(wp, wsp, wq, ws):
    N, K = wq.shape
    G = wp.shape[0]
    nb = wp.shape[1]
    nfull = K // 32
    for g in prange(G):
        n0 = ROWS * g
        if n0 + ROWS <= N:  # whole group: write wp in order, 4-byte runs from each row
            for b in range(nfull):
                for s in range(8):
                    for r in range(ROWS):
                        for i in range(4):
                            wp[g, b, 64 * s + 4 * r + i] = np.uint8(
                                np.int32(wq[n0 + r, 32 * b + 4 * s + i]) + 128)
            first = nfull
        else:
            first = 0
        for b in range(first, nb):  # padded rows / columns: the general case
            for i in range(BLOCK_BYTES):
                wp[g, b, i] = 128
            for r in range(min(ROWS, N - n0)):
                for c in range(32 * b, min(K, 32 * b + 32)):
                    wp[g, b, 64 * ((c % 32) // 4) + 4 * r + c % 4] = np.uint8(
                        np.int32(wq[n0 + r, c]) + 128)
        for b in range(nb):
            for r in range(ROWS):
                wsp[g, b, r] = ws[n0 + r, b] if n0 + r < N else np.uint16(0)


class ScaleRangeError(ValueError):
    """A block scale that fp16 cannot hold (a weight beyond about +-8.3e6, or inf / nan)."""


def scales_to_f16(ws):
    """IEEE fp16 bit patterns (uint16) of float32 scales, rounded to nearest even (llama.cpp's
    GGML_FP32_TO_FP16; subnormal results exact); ScaleRangeError if one is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        h = np.asarray(ws, np.float32).astype(np.float16)
    bad = ~np.isfinite(h)
    if bad.any():
        n, b = (int(i[0]) for i in np.nonzero(bad))
        raise ScaleRangeError(
            f"{int(bad.sum())} weight block scale(s) do not fit float16 (row {n}, block {b}: "
            f"scale {float(np.asarray(ws)[n, b]):.6g}; int8 weights need finite |w| < 8.3e6)")
    return h.view(np.uint16)


def pack_q8(wq, ws):
    """(wp, wsp): the packed layout of a Q8 matrix (see the module docstring); ws float32,
    rounded to fp16 here (ScaleRangeError if out of range)."""
    wq = np.ascontiguousarray(wq, np.int8)
    n, k = wq.shape
    g, nb = packed_shape(n, k)
    if np.shape(ws) != (n, nb):
        raise ValueError(f"ws has shape {np.shape(ws)}, expected {(n, nb)}")
    wsh = scales_to_f16(ws)
    wp = _aligned_empty((g, nb, BLOCK_BYTES), np.uint8)
    wsp = _aligned_empty((g, nb, ROWS), np.uint16)
    if n and k:
        _pack(wp, wsp, wq, wsh)
    return wp, wsp


def unpack_q8(wp, wsp, n, k):
    """(wq, ws) from the packed layout: the inverse of pack_q8 (numpy, for tests and tools);
    ws float32, the fp16 scales widened exactly."""
    g, nb = wp.shape[0], wp.shape[1]
    w = (wp.astype(np.int16) - 128).astype(np.int8).reshape(g, nb, 8, ROWS, 4)
    wq = w.transpose(0, 3, 1, 2, 4).reshape(g * ROWS, nb * QK)[:n, :k]
    ws = np.asarray(wsp).view(np.float16).transpose(0, 2, 1).reshape(g * ROWS, nb)[:n]
    return np.ascontiguousarray(wq), ws.astype(np.float32)


@kernel(parallel=True)
def q8p_embed(out, ids, wp, wsp, scale):
    """out (T, K) = dequantized packed rows ids[t] times scale (a tied embedding table)."""
    K = out.shape[1]
    sc = np.float32(scale)
    for t in prange(ids.shape[0]):
        g = ids[t] // ROWS
        r = ids[t] % ROWS
        for c in range(K):
            b = c // 32
            q = np.int32(wp[g, b, 64 * ((c % 32) // 4) + 4 * r + c % 4]) - 128
            out[t, c] = np.float32(q) * (h2f(wsp[g, b, r]) * sc)


# ----------------------------------------------------------------------------- activations

@kernel
def _quantize_row(xq, xs, xsum, x):
    K = x.shape[0]
    nfull = K // 32
    simd.quant_blocks(xq, xs, xsum, x, nfull)
    if nfull < xs.shape[0]:  # the short last block, same arithmetic in scalar code
        lo = 32 * nfull
        amax = np.float32(0.0)
        for c in range(lo, K):
            amax = max(amax, abs(x[c]))
        d = np.float32(np.float64(amax) / 127.0)
        xs[nfull] = d
        inv = _q8_inv(d)
        s = 0
        for c in range(lo, K):
            q = _q8_round(x[c] * inv)
            xq[c] = q
            s += np.int32(q)
        for c in range(K, lo + 32):
            xq[c] = 0
        xsum[nfull] = s


@kernel(parallel=True)
def quantize_act(xq, xs, xsum, x):
    """x float32 (T, K) -> xq int8 (T, 32 nb) zero padded, xs float32 (T, nb) = amax / 127,
    xsum int32 (T, nb) = block sums of xq. Rounding as quantize_q8 (ties away from zero)."""
    T = x.shape[0]
    if T == 1:  # no parallel region for one token
        _quantize_row(xq[0], xs[0], xsum[0], x[0])
        return
    for t in prange(T):
        _quantize_row(xq[t], xs[t], xsum[t], x[t])


def act_buffers(t, k):
    """Preallocated (xq, xs, xsum) for up to t tokens of k inputs (slice [:T] per call)."""
    nb = (int(k) + QK - 1) // QK
    return (_aligned_empty((t, nb * QK), np.int8), np.empty((t, nb), np.float32),
            np.empty((t, nb), np.int32))


# ----------------------------------------------------------------------------- products

@kernel
def _check(out, xq, xs, xsum, wp, wsp, n_out, T, block_bytes):
    """Shapes and strides the IR cores rely on (they index raw memory); block_bytes: 512
    (int8) or 256 (int4)."""
    G, nb = wp.shape[0], wp.shape[1]
    if (wp.shape[2] != block_bytes or wsp.shape[0] != G or wsp.shape[1] != nb
            or wsp.shape[2] != ROWS or wp.strides[0] != nb * block_bytes
            or wp.strides[1] != block_bytes or wp.strides[2] != 1
            or wsp.strides[0] != nb * 32 or wsp.strides[1] != 32 or wsp.strides[2] != 2):
        raise ValueError("wp, wsp: not a C-contiguous packed pair from pack_q8 / pack_q4")
    if n_out > ROWS * G or n_out < 0 or out.shape[out.ndim - 1] < n_out:
        raise ValueError("n_out does not fit the packed matrix or the output")
    if (xq.shape[xq.ndim - 1] != 32 * nb or xs.shape[xs.ndim - 1] != nb
            or xsum.shape[xsum.ndim - 1] != nb):
        raise ValueError("activations: expected xq (T, 32 nb), xs and xsum (T, nb)")
    if (out.strides[out.ndim - 1] != 4 or xq.strides[xq.ndim - 1] != xq.itemsize
            or xs.strides[xs.ndim - 1] != 4 or xsum.strides[xsum.ndim - 1] != 4):
        raise ValueError("rows of out / xq / xs / xsum must be contiguous")
    if xq.shape[0] < T or xs.shape[0] < T or xsum.shape[0] < T:
        raise ValueError("xq, xs, xsum need a row per token")
    if T > 1 and xs.strides[0] != xsum.strides[0]:
        raise ValueError("xs and xsum need the same row strides")


@kernel(parallel=True)
def q8p_gemv_vnni(out, xq, xs, xsum, wp, wsp, n_out):
    """out (n_out,) = W x for one token: row 0 of xq (1, 32 nb), xs and xsum (1, nb)."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(G):
        simd.vnni_q8p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q8p_gemm_vnni(out, xq, xs, xsum, wp, wsp, n_out):
    """out (T, n_out) = x Wᵀ for T = out.shape[0] tokens (rows of xq / xs / xsum)."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, out.strides[0], xq.strides[0], xs.strides[0])
    nch = (G + _GEMM_GROUPS - 1) // _GEMM_GROUPS
    for ch in prange(nch):
        g0 = ch * _GEMM_GROUPS
        g1 = min(G, g0 + _GEMM_GROUPS)
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.vnni_q8p(out, wp, wsp, xq, xs, xsum, g0, g1, t0, min(T, t0 + _GEMM_TOKENS),
                          strides)


@kernel(parallel=True)
def q8p_gemv_avxvnni(out, xq, xs, xsum, wp, wsp, n_out):
    """q8p_gemv with 256-bit vpdpbusd (AVX-VNNI)."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(G):
        simd.avxvnni_q8p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q8p_gemm_avxvnni(out, xq, xs, xsum, wp, wsp, n_out):
    """q8p_gemm with 256-bit vpdpbusd (AVX-VNNI)."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, out.strides[0], xq.strides[0], xs.strides[0])
    nch = (G + _GEMM_GROUPS - 1) // _GEMM_GROUPS
    for ch in prange(nch):
        g0 = ch * _GEMM_GROUPS
        g1 = min(G, g0 + _GEMM_GROUPS)
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.avxvnni_q8p(out, wp, wsp, xq, xs, xsum, g0, g1, t0, min(T, t0 + _GEMM_TOKENS),
                             strides)


@kernel(parallel=True)
def q8p_gemv_sdot(out, xq, xs, xsum, wp, wsp, n_out):
    """q8p_gemv with AArch64 sdot."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(wp.shape[0]):
        simd.sdot_q8p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q8p_gemm_sdot(out, xq, xs, xsum, wp, wsp, n_out):
    """q8p_gemm with AArch64 sdot."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, out.strides[0], xq.strides[0], xs.strides[0])
    for ch in prange((G + _GEMM_GROUPS - 1) // _GEMM_GROUPS):
        g0 = ch * _GEMM_GROUPS
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.sdot_q8p(out, wp, wsp, xq, xs, xsum, g0, min(G, g0 + _GEMM_GROUPS), t0,
                          min(T, t0 + _GEMM_TOKENS), strides)


@kernel(parallel=True)
def q8p_gemv_portable(out, xq, xs, xsum, wp, wsp, n_out):
    """q8p_gemv for any CPU (generic vector IR, float32 FMAs on exact integers)."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(G):
        simd.float_q8p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q8p_gemm_portable(out, xq, xs, xsum, wp, wsp, n_out):
    """q8p_gemm for any CPU. Allocates a float32 copy of xq per call: the FMAs then take
    activations as broadcast memory operands (1.3x faster than converting per block)."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    kp = xq.shape[1]
    xf = np.empty((T, kp), np.float32)
    for t in prange(T):
        for c in range(kp):
            xf[t, c] = np.float32(xq[t, c])
    strides = (wp.shape[1], n_out, out.strides[0], xf.strides[0], xs.strides[0])
    nch = (G + _GEMM_GROUPS - 1) // _GEMM_GROUPS
    for ch in prange(nch):
        g0 = ch * _GEMM_GROUPS
        g1 = min(G, g0 + _GEMM_GROUPS)
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.float_q8p(out, wp, wsp, xf, xs, xsum, g0, g1, t0, min(T, t0 + _GEMM_TOKENS),
                           strides)


KERNELS = {  # simd mode -> (gemv, gemm); only call a mode simd.available() lists
    "vnni": (q8p_gemv_vnni, q8p_gemm_vnni),
    "avxvnni": (q8p_gemv_avxvnni, q8p_gemm_avxvnni),
    "sdot": (q8p_gemv_sdot, q8p_gemm_sdot),
    "portable": (q8p_gemv_portable, q8p_gemm_portable),
}
q8p_gemv, q8p_gemm = KERNELS[simd.MODE]
