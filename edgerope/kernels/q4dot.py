"""Int4 weights: llama.cpp's Q4_0 blocks, packed for the integer-dot cores of q8dot.

Q4_0 (ggml's block_q4_0): per row and 32-column block one scale d (fp16) and 32 4-bit codes
q in 0..15, weight = (q - 8) * d; byte j of the block's 16 (`qs`) holds column j in its low
nibble and column j + 16 in its high nibble. 18 bytes per 32 weights: 4.5 bits a weight.

Packed format, built by `pack_q4(qs, ws) -> (wp, wsp)` from qs uint8 (N, nb, 16) (Q4_0 `qs`
bytes per row and block) and ws float32 (N, nb):

- rows grouped by 16 as in q8dot: G = ceil(N / 16) (missing rows: codes 8, scale 0);
- `wp` uint8 (G, nb, 256), 64-byte aligned: wp[g, b, 64 s + 4 r + i] = qs[16 g + r, b, 4 s + i]
  for s = 0..3, i = 0..3 -- every byte is one Q4_0 byte, moved. One 64-byte load holds 16
  rows x (4 columns in low nibbles + the 4 columns 16 further in high nibbles): masked and
  shifted, it feeds two vpdpbusd (codes unsigned, activations signed), corrected by
  8 x the activation block sum;
- `wsp` uint16 (G, nb, 16): fp16 bit patterns of the scales, as in q8dot.

So a GGUF Q4_0 tensor packs bit for bit, and `quantize_q4` reproduces ggml's reference
quantizer (quantize_row_q4_0_ref: d = the signed value of largest magnitude / -8, codes
min(15, trunc(x / d + 8.5)) in float32, d stored as fp16).

Products `q4p_gemv` / `q4p_gemm` take the arguments of q8dot's (activations from
`quantize_act`) and compute, per the same rules, out[t, n] = sum_b float(idot) * (d16 * xs)
with exact integer block dots: bit-identical across paths ("vnni", "avxvnni", "portable"),
thread counts and GEMV vs GEMM rows ("sdot" too, on AArch64). `KERNELS[mode]` reaches
each path.
"""
import numpy as np

from edgerope.kernels import simd
from edgerope.kernels.half import h2f
from edgerope.kernels.jit import kernel, prange
from edgerope.kernels.q8dot import (_GEMM_GROUPS, _GEMM_TOKENS, QK, ROWS, _aligned_empty, _check,
                    packed_shape, scales_to_f16)

BLOCK_BYTES = 256  # ROWS * QK / 2


def quantize_q4(x):
    """(qs uint8 (N, nb, 16), d float32 (N, nb)) of x float32 (N, K), finite: ggml's Q4_0
    reference rounding (columns past K count as zeros)."""
    x = np.asarray(x, np.float32)
    n, k = x.shape
    nb = (k + QK - 1) // QK
    xb = np.zeros((n, nb * QK), np.float32)
    xb[:, :k] = x
    xb = xb.reshape(n, nb, QK)
    first = np.argmax(np.abs(xb), axis=2)[..., None]  # first of equal magnitudes, as ggml
    d = np.take_along_axis(xb, first, 2)[..., 0] / np.float32(-8.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    q = (xb * inv[..., None] + np.float32(8.5)).astype(np.int8)  # truncation, as C's cast
    q = np.minimum(q, 15).astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4), d.astype(np.float32)


def dequantize_q4(qs, ws, k):
    """float32 (N, k) weights of Q4_0 blocks (numpy; for tools and tests)."""
    qs = np.asarray(qs, np.uint8)
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float32) - 8.0
    w = q * np.asarray(ws, np.float32)[..., None]
    return np.ascontiguousarray(w.reshape(qs.shape[0], -1)[:, :k])


def pack_q4(qs, ws):
    """(wp, wsp): the packed layout of Q4_0 blocks (module docstring); ws float32, rounded to
    fp16 here (ScaleRangeError if out of range)."""
    qs = np.asarray(qs, np.uint8)
    n, nb = qs.shape[0], qs.shape[1]
    if qs.shape != (n, nb, 16) or np.shape(ws) != (n, nb):
        raise ValueError(f"qs {qs.shape} / ws {np.shape(ws)}: expected (N, nb, 16) / (N, nb)")
    wsh = scales_to_f16(ws)
    g = (n + ROWS - 1) // ROWS
    full = np.full((g * ROWS, nb, 16), 0x88, np.uint8)
    full[:n] = qs
    wp = _aligned_empty((g, nb, BLOCK_BYTES), np.uint8)
    wp[...] = full.reshape(g, ROWS, nb, 4, 4).transpose(0, 2, 3, 1, 4).reshape(g, nb, -1)
    sc = np.zeros((g * ROWS, nb), np.uint16)
    sc[:n] = wsh
    wsp = _aligned_empty((g, nb, ROWS), np.uint16)
    wsp[...] = sc.reshape(g, ROWS, nb).transpose(0, 2, 1)
    return wp, wsp


def unpack_q4(wp, wsp, n):
    """(qs, ws) from the packed layout, the inverse of pack_q4; ws float32 (fp16 exactly)."""
    g, nb = wp.shape[0], wp.shape[1]
    qs = np.asarray(wp).reshape(g, nb, 4, ROWS, 4).transpose(0, 3, 1, 2, 4)
    qs = qs.reshape(g * ROWS, nb, 16)[:n]
    ws = np.asarray(wsp).view(np.float16).transpose(0, 2, 1).reshape(g * ROWS, nb)[:n]
    return np.ascontiguousarray(qs), ws.astype(np.float32)


def q4_shape(n, k):
    """Shape of the packed (wp) array of an int4 (n, k) matrix."""
    g, nb = packed_shape(n, k)
    return g, nb, BLOCK_BYTES


@kernel(parallel=True)
def q4p_embed(out, ids, wp, wsp, scale):
    """out (T, K) = dequantized packed int4 rows ids[t] times scale (a tied embedding)."""
    K = out.shape[1]
    sc = np.float32(scale)
    for t in prange(ids.shape[0]):
        g = ids[t] // ROWS
        r = ids[t] % ROWS
        for c in range(K):
            b = c // 32
            j = c % 32
            byte = np.int32(wp[g, b, 64 * ((j % 16) // 4) + 4 * r + j % 4])
            q = (byte >> 4 if j >= 16 else byte & 15) - 8
            out[t, c] = np.float32(q) * (h2f(wsp[g, b, r]) * sc)


@kernel(parallel=True)
def q4p_gemv_vnni(out, xq, xs, xsum, wp, wsp, n_out):
    """out (n_out,) = W x for one token (int4 W; AVX-512 VNNI)."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(wp.shape[0]):
        simd.vnni_q4p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q4p_gemm_vnni(out, xq, xs, xsum, wp, wsp, n_out):
    """out (T, n_out) = x Wᵀ for T = out.shape[0] tokens (int4 W; AVX-512 VNNI)."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, out.strides[0], xq.strides[0], xs.strides[0])
    for ch in prange((G + _GEMM_GROUPS - 1) // _GEMM_GROUPS):
        g0 = ch * _GEMM_GROUPS
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.vnni_q4p(out, wp, wsp, xq, xs, xsum, g0, min(G, g0 + _GEMM_GROUPS), t0,
                          min(T, t0 + _GEMM_TOKENS), strides)


@kernel(parallel=True)
def q4p_gemv_avxvnni(out, xq, xs, xsum, wp, wsp, n_out):
    """q4p_gemv with 256-bit vpdpbusd (AVX-VNNI)."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(wp.shape[0]):
        simd.avxvnni_q4p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q4p_gemm_avxvnni(out, xq, xs, xsum, wp, wsp, n_out):
    """q4p_gemm with 256-bit vpdpbusd (AVX-VNNI)."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, out.strides[0], xq.strides[0], xs.strides[0])
    for ch in prange((G + _GEMM_GROUPS - 1) // _GEMM_GROUPS):
        g0 = ch * _GEMM_GROUPS
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.avxvnni_q4p(out, wp, wsp, xq, xs, xsum, g0, min(G, g0 + _GEMM_GROUPS), t0,
                             min(T, t0 + _GEMM_TOKENS), strides)


@kernel(parallel=True)
def q4p_gemv_sdot(out, xq, xs, xsum, wp, wsp, n_out):
    """q4p_gemv with AArch64 sdot."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(wp.shape[0]):
        simd.sdot_q4p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q4p_gemm_sdot(out, xq, xs, xsum, wp, wsp, n_out):
    """q4p_gemm with AArch64 sdot."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    strides = (wp.shape[1], n_out, out.strides[0], xq.strides[0], xs.strides[0])
    for ch in prange((G + _GEMM_GROUPS - 1) // _GEMM_GROUPS):
        g0 = ch * _GEMM_GROUPS
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.sdot_q4p(out, wp, wsp, xq, xs, xsum, g0, min(G, g0 + _GEMM_GROUPS), t0,
                          min(T, t0 + _GEMM_TOKENS), strides)


@kernel(parallel=True)
def q4p_gemv_portable(out, xq, xs, xsum, wp, wsp, n_out):
    """q4p_gemv for any CPU (generic vector IR, float32 FMAs on exact integers)."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(wp.shape[0]):
        simd.float_q4p(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)


@kernel(parallel=True)
def q4p_gemm_portable(out, xq, xs, xsum, wp, wsp, n_out):
    """q4p_gemm for any CPU (float32 copy of xq per call, as q8p_gemm_portable)."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)
    G = wp.shape[0]
    xf = np.empty((T, xq.shape[1]), np.float32)
    for t in prange(T):
        for c in range(xq.shape[1]):
            xf[t, c] = np.float32(xq[t, c])
    strides = (wp.shape[1], n_out, out.strides[0], xf.strides[0], xs.strides[0])
    for ch in prange((G + _GEMM_GROUPS - 1) // _GEMM_GROUPS):
        g0 = ch * _GEMM_GROUPS
        for t0 in range(0, T, _GEMM_TOKENS):
            simd.float_q4p(out, wp, wsp, xf, xs, xsum, g0, min(G, g0 + _GEMM_GROUPS), t0,
                           min(T, t0 + _GEMM_TOKENS), strides)


KERNELS = {  # simd mode -> (gemv, gemm); only call a mode simd.available() lists
    "vnni": (q4p_gemv_vnni, q4p_gemm_vnni),
    "avxvnni": (q4p_gemv_avxvnni, q4p_gemm_avxvnni),
    "sdot": (q4p_gemv_sdot, q4p_gemm_sdot),
    "portable": (q4p_gemv_portable, q4p_gemm_portable),
}
q4p_gemv, q4p_gemm = KERNELS[simd.MODE]
