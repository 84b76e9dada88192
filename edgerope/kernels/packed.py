"""Matmul and embedding kernels over packed weights (Q8_0 and Q4_0 blocks; layouts in
edgerope.formats.q8 / q4), with int8 activations quantized per 32-block.

Activations: `quantize_act(xq, xs, xsum, x)` turns x float32 (T, K) into xq int8 (T, 32 nb)
(zero padded), xs float32 (T, nb) and xsum int32 (T, nb) (block sums of xq), with the
rounding of llama.cpp's quantize_row_q8_0 reference (= matmul.quantize_q8). Once per matmul
input; several matrices with the same input (q|k|v) share it. `act_buffers` (layout.py)
preallocates them.

Products, all `(out, xq, xs, xsum, wp, wsp, n_out)`, output first:
- gemv: out (n_out,) for one token, row 0 of xq / xs / xsum (pass xq[t:t+1] etc.);
- gemm: out (T, >= n_out) for T = out.shape[0] tokens (rows may be strided views).
out[t, n] = sum_b float(idot[t, n, b]) * (ws16[n, b] * xs[t, b]) accumulated over blocks in
order with one fused multiply-add each, idot being the exact integer block dot and ws16 the
fp16 scale widened to float32 (exactly). Every path computes exactly these numbers, so
results are bit-identical between GEMV and GEMM rows, thread counts and SIMD paths (simd.py:
"vnni", "avxvnni", "sdot", "portable"). Compared with float activations the rounding adds
about 0.5% relative RMS error on Gaussian inputs -- what llama.cpp does for Q8_0 too.

One gemv body and one gemm body serve every (format, path): `_gemv` / `_gemm` are templates
whose globals CORE (simd.core(fmt, mode)), BLOCK_BYTES and PREPARE (the activations the core
reads) are bound per instance (`_instantiate`), so each instance is its own Numba dispatcher
with the core frozen in at compile time -- no per-call argument picks it -- and its own cache
files (named after the instance's qualname, e.g. q8p_gemm_vnni). `KERNELS[fmt][mode]` ->
(gemv, gemm) reaches every instance (call only modes simd.available() lists); `q8p_gemv`,
`q8p_gemm`, `q4p_gemv`, `q4p_gemm` are those of `simd.MODE` (env EDGEROPE_SIMD overrides).
A new format is a `simd._Fmt` (its block layout as the cores read it), a decode for `embed`
and one `_products(...)` line below.
"""
import types

import numpy as np

from edgerope.kernels import simd
from edgerope.kernels.half import h2f
from edgerope.kernels.jit import kernel, prange
from edgerope.kernels.layout import QK, ROWS, act_buffers, aligned_empty  # noqa: F401 - API
from edgerope.kernels.matmul import _q8_inv, _q8_round

_GEMM_GROUPS = 4   # groups per parallel chunk in gemm: their weights stay in L2 ...
_GEMM_TOKENS = 64  # ... while tokens stream through in blocks of this many


# ----------------------------------------------------------------------------- packing

@kernel(parallel=True)
def q8p_pack(wp, wsp, wq, wsh):
    """Q8 rows wq int8 (N, K) and fp16 scale bits wsh uint16 (N, nb) into the packed layout
    (edgerope.formats.q8): wp uint8 (G, nb, 512), wsp uint16 (G, nb, 16)."""
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
            for i in range(512):
                wp[g, b, i] = 128
            for r in range(min(ROWS, N - n0)):
                for c in range(32 * b, min(K, 32 * b + 32)):
                    wp[g, b, 64 * ((c % 32) // 4) + 4 * r + c % 4] = np.uint8(
                        np.int32(wq[n0 + r, c]) + 128)
        for b in range(nb):
            for r in range(ROWS):
                wsp[g, b, r] = wsh[n0 + r, b] if n0 + r < N else np.uint16(0)


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


# ----------------------------------------------------------------------------- products

@kernel
def _check(out, xq, xs, xsum, wp, wsp, n_out, T, block_bytes):
    """Shapes and strides the IR cores rely on (they index raw memory)."""
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


@kernel
def _int8_activations(xq):
    """The activations as the integer-dot cores read them: xq itself."""
    return xq


@kernel(parallel=True)
def _float_activations(xq):
    """A float32 copy of xq, for the portable core's GEMM: its FMAs then take activations as
    broadcast memory operands, faster than converting per block (bench/kernels.py); one
    allocation per call."""
    T, kp = xq.shape[0], xq.shape[1]
    xf = np.empty((T, kp), np.float32)
    for t in prange(T):
        for c in range(kp):
            xf[t, c] = np.float32(xq[t, c])
    return xf


# The templates: CORE, BLOCK_BYTES and PREPARE are not defined in this module; each instance
# gets its own (see _instantiate).

def _gemv(out, xq, xs, xsum, wp, wsp, n_out):
    """out (n_out,) = W x for one token: row 0 of xq (1, 32 nb), xs and xsum (1, nb)."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES)  # noqa: F821
    strides = (wp.shape[1], n_out, 0, 0, 0)
    for g in prange(wp.shape[0]):
        CORE(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)  # noqa: F821


def _gemm(out, xq, xs, xsum, wp, wsp, n_out):
    """out (T, n_out) = x Wᵀ for T = out.shape[0] tokens (rows of xq / xs / xsum)."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES)  # noqa: F821
    G = wp.shape[0]
    x = PREPARE(xq)  # noqa: F821
    strides = (wp.shape[1], n_out, out.strides[0], x.strides[0], xs.strides[0])
    for ch in prange((G + _GEMM_GROUPS - 1) // _GEMM_GROUPS):
        g0 = ch * _GEMM_GROUPS
        for t0 in range(0, T, _GEMM_TOKENS):
            CORE(out, wp, wsp, x, xs, xsum, g0, min(G, g0 + _GEMM_GROUPS), t0,  # noqa: F821
                 min(T, t0 + _GEMM_TOKENS), strides)


def _embed(out, ids, wp, wsp, scale):
    """out (T, K) = dequantized packed rows ids[t] times scale (a tied embedding table)."""
    K = out.shape[1]
    sc = np.float32(scale)
    for t in prange(ids.shape[0]):
        g = ids[t] // ROWS
        r = ids[t] % ROWS
        for c in range(K):
            b = c // 32
            out[t, c] = np.float32(DECODE(wp, g, b, r, c % 32)) * (  # noqa: F821
                h2f(wsp[g, b, r]) * sc)


def _instantiate(template, name, **bound):
    """`template` compiled as its own kernel `name`, with the globals `bound` frozen in."""
    fn = types.FunctionType(template.__code__, {**globals(), **bound}, name,
                            template.__defaults__, template.__closure__)
    fn.__qualname__ = name  # Numba names the cache files after it: one set per instance
    fn.__doc__ = template.__doc__
    return kernel(fn, parallel=True)


def _products(fmt, decode):
    """({mode: (gemv, gemm)}, embed) of a packed format (a simd._Fmt); `decode(wp, g, b, r,
    j)` -> the int weight of row r, column j of block b in group g (for embed)."""
    paths = {}
    for mode in simd.MODES:
        core = simd.core(fmt, mode)
        gemm_x = _float_activations if mode == "portable" else _int8_activations
        paths[mode] = (
            _instantiate(_gemv, f"{fmt.name}p_gemv_{mode}", CORE=core,
                         BLOCK_BYTES=fmt.block_bytes),
            _instantiate(_gemm, f"{fmt.name}p_gemm_{mode}", CORE=core,
                         BLOCK_BYTES=fmt.block_bytes, PREPARE=gemm_x))
    return paths, _instantiate(_embed, f"{fmt.name}p_embed", DECODE=decode)


@kernel
def _q8_code(wp, g, b, r, j):
    return np.int32(wp[g, b, 64 * (j // 4) + 4 * r + j % 4]) - 128


@kernel
def _q4_code(wp, g, b, r, j):
    byte = np.int32(wp[g, b, 64 * ((j % 16) // 4) + 4 * r + j % 4])
    return (byte >> 4 if j >= 16 else byte & 15) - 8


_Q8, q8p_embed = _products(simd.Q8, _q8_code)
_Q4, q4p_embed = _products(simd.Q4, _q4_code)
KERNELS = {"q8": _Q8, "q4": _Q4}  # format -> simd mode -> (gemv, gemm)
q8p_gemv, q8p_gemm = KERNELS["q8"][simd.MODE]
q4p_gemv, q4p_gemm = KERNELS["q4"][simd.MODE]
