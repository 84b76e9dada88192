"""Matmul and embedding kernels over packed weights (Q8_0, Q4_0 and ggml's other block types;
layouts in edgerope.formats.q8 / q4 / ggml_blocks), with int8 activations.

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
whose globals CORE (simd.core(fmt, mode)), BLOCK_BYTES, PREPARE (the activations the core
reads) and SUMS (the activation sums as the GEMM core reads them: `bias_sums`, `k_min_sums`
or as they are) are bound per instance (`_instantiate`), so each instance is its own Numba
dispatcher with the core frozen in at compile time -- no per-call argument picks it -- and its
own cache files (named after the instance's qualname, e.g. q8p_gemm_vnni). `KERNELS[fmt][mode]` ->
(gemv, gemm) reaches every instance (call only modes simd.available() lists); `q8p_gemv`,
`q8p_gemm`, `q4p_gemv`, `q4p_gemm` are those of `simd.MODE` (env EDGEROPE_SIMD overrides).
Every format of edgerope.kernels.layout.GEOMETRY has its instances: Q8_0 ("q8") and Q4_0
("q4") as above, and ggml's Q4_1, Q5_0, Q5_1 (the same Q8_0 activations; mins add
m * xs * xsum) and K-quants Q4_K, Q5_K, Q6_K, whose products take Q8_K activations
(`quantize_act_k`: one scale per 256 columns, sums per 16; act_buffers(t, k, "q8_k")).
A new format is its geometry (layout.py), a `simd._Fmt` (its block layout as the cores read
it), a value function for `embed` and one entry in the table at the end.
"""
import types

import numpy as np

from edgerope.kernels import simd
from edgerope.kernels.half import h2f
from edgerope.kernels.jit import kernel, prange
from edgerope.kernels.layout import QK, ROWS, act_buffers, aligned_empty  # noqa: F401 - API
from edgerope.kernels.layout import GEMM_TOKENS, GEOMETRY, QK_K
from edgerope.kernels.matmul import _q8_inv, _q8_round

_GEMM_GROUPS = 4   # groups per parallel chunk in gemm: their weights stay in L2 ...
_GEMM_TOKENS = GEMM_TOKENS  # ... while tokens stream through in blocks of this many


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


@kernel
def _quantize_row_k(xq, xd, bsum, x):
    bits = x.view(np.uint32)
    for B in range(xd.shape[0]):
        lo = QK_K * B
        # the largest magnitude as the largest |x| bit pattern (same order as the floats;
        # an integer max, which vectorizes), then the first value of that magnitude
        top = np.uint32(0)
        for j in range(QK_K):
            top = max(top, bits[lo + j] & np.uint32(0x7FFFFFFF))
        if top == 0:
            xd[B] = 0
            for j in range(QK_K):
                xq[lo + j] = 0
            for u in range(16):
                bsum[16 * B + u] = 0
            continue
        first = QK_K - 1
        for j in range(QK_K):  # a min reduction too, not a search that stops
            first = min(first, j if bits[lo + j] & np.uint32(0x7FFFFFFF) == top else QK_K)
        # float64 then rounded: the correctly rounded float32 quotient, whatever fastmath
        iscale = np.float32(-127.0 / np.float64(x[lo + first]))
        for j in range(QK_K):
            xq[lo + j] = np.int8(min(np.rint(iscale * x[lo + j]), np.float32(127.0)))
        for u in range(16):
            s = 0
            for i in range(16):
                s += np.int32(xq[lo + 16 * u + i])
            bsum[16 * B + u] = s
        xd[B] = np.float32(1.0 / np.float64(iscale))


@kernel(parallel=True)
def quantize_act_k(xq, xd, bsum, x):
    """x float32 (T, K), K a multiple of 256 -> Q8_K activations (llama.cpp's
    quantize_row_q8_K_ref): per 256 columns iscale = -127 / (the value of largest magnitude),
    xq = round-half-even(iscale x) (at most 127), xd = 1 / iscale, and bsum int32 (T, K / 16)
    the sums of xq over 16 columns (for the K-quants' min and offset terms)."""
    T = x.shape[0]
    if T == 1:
        _quantize_row_k(xq[0], xd[0], bsum[0], x[0])
        return
    for t in prange(T):
        _quantize_row_k(xq[t], xd[t], bsum[t], x[t])


# ----------------------------------------------------------------------------- products

@kernel
def _check(out, xq, xs, xsum, wp, wsp, n_out, T, block_bytes, wsp_rows, qk, nsum):
    """Shapes and strides the IR cores rely on (they index raw memory)."""
    G, nb = wp.shape[0], wp.shape[1]
    if (wp.shape[2] != block_bytes or wsp.shape[0] != G or wsp.shape[1] != nb
            or wsp.shape[2] != wsp_rows or wp.strides[0] != nb * block_bytes
            or wp.strides[1] != block_bytes or wp.strides[2] != 1
            or wsp.strides[0] != nb * 2 * wsp_rows or wsp.strides[1] != 2 * wsp_rows
            or wsp.strides[2] != 2):
        raise ValueError("wp, wsp: not a C-contiguous packed pair of this format")
    if n_out > ROWS * G or n_out < 0 or out.shape[out.ndim - 1] < n_out:
        raise ValueError("n_out does not fit the packed matrix or the output")
    if (xq.shape[xq.ndim - 1] != qk * nb or xs.shape[xs.ndim - 1] != nb
            or xsum.shape[xsum.ndim - 1] != nsum * nb):
        raise ValueError("activations do not match the matrix (xq (T, K), xs, xsum per block)")
    if (out.strides[out.ndim - 1] != 4 or xq.strides[xq.ndim - 1] != xq.itemsize
            or xs.strides[xs.ndim - 1] != 4 or xsum.strides[xsum.ndim - 1] != 4):
        raise ValueError("rows of out / xq / xs / xsum must be contiguous")
    if xq.shape[0] < T or xs.shape[0] < T or xsum.shape[0] < T:
        raise ValueError("xq, xs, xsum need a row per token")


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


@kernel
def _same_sums(xsum, bias, scratch):
    """The block sums as the core reads them: xsum itself."""
    return xsum


@kernel
def bias_sums(xsum, bias, scratch):
    """-bias * xsum (T, nb), the start of every block dot in the GEMM cores whose
    simd.gemm_sums is "bias"; in `scratch` (layout.gemm_scratch_len) or, without one, a new
    array."""
    T, nb = xsum.shape
    if scratch is None:
        out = np.empty((T, nb), np.int32)
    else:
        out = scratch[:T * nb].view(np.int32).reshape((T, nb))
    for t in range(T):
        for b in range(nb):
            out[t, b] = -bias * xsum[t, b]
    return out


@kernel
def k_min_sums(bsum, bias, scratch):
    """The Q8_K activations' 32-column sums as float32 (T, 8 nb) from their 16-sums (T, 16 nb):
    the min terms of Q4_K / Q5_K in their GEMM cores whose simd.gemm_sums is "min"; in
    `scratch` or a new array as bias_sums. (`bias` unused: the signature of every SUMS.)"""
    T, n = bsum.shape
    if scratch is None:
        out = np.empty((T, n // 2), np.float32)
    else:
        out = scratch[:T * (n // 2)].reshape((T, n // 2))
    for t in range(T):
        for u in range(n // 2):
            out[t, u] = np.float32(bsum[t, 2 * u] + bsum[t, 2 * u + 1])
    return out


# The templates: CORE, BLOCK_BYTES, PREPARE, SUMS and BIAS are not defined in this module;
# each instance gets its own (see _instantiate).

def _gemv(out, xq, xs, xsum, wp, wsp, n_out):
    """out (n_out,) = W x for one token: row 0 of xq, xs and xsum."""
    _check(out, xq, xs, xsum, wp, wsp, n_out, 1, BLOCK_BYTES, WSP_ROWS, QKX, NSUM)  # noqa: F821
    strides = (wp.shape[1], n_out, 0, 0, 0, 0)
    for g in prange(wp.shape[0]):
        CORE(out, wp, wsp, xq, xs, xsum, g, g + 1, 0, 1, strides)  # noqa: F821


def _gemm(out, xq, xs, xsum, wp, wsp, n_out, scratch=None):
    """out (T, n_out) = x Wᵀ for T = out.shape[0] tokens (rows of xq / xs / xsum). scratch:
    float32, at least layout.gemm_scratch_len elements, for the prepared sums the core reads
    (callers that multiply often keep one: formats.linear.Activations); None: allocated per
    call."""
    T = out.shape[0]
    _check(out, xq, xs, xsum, wp, wsp, n_out, T, BLOCK_BYTES, WSP_ROWS, QKX, NSUM)  # noqa: F821
    G = wp.shape[0]
    x = PREPARE(xq)  # noqa: F821
    sums = SUMS(xsum, BIAS, scratch)  # noqa: F821
    strides = (wp.shape[1], n_out, out.strides[0], x.strides[0], xs.strides[0],
               sums.strides[0])
    for ch in prange((G + _GEMM_GROUPS - 1) // _GEMM_GROUPS):
        g0 = ch * _GEMM_GROUPS
        for t0 in range(0, T, _GEMM_TOKENS):
            CORE(out, wp, wsp, x, xs, sums, g0, min(G, g0 + _GEMM_GROUPS), t0,  # noqa: F821
                 min(T, t0 + _GEMM_TOKENS), strides)


def _instantiate(template, name, **bound):
    """`template` compiled as its own kernel `name`, with the globals `bound` frozen in."""
    fn = types.FunctionType(template.__code__, {**globals(), **bound}, name,
                            template.__defaults__, template.__closure__)
    fn.__qualname__ = name  # Numba names the cache files after it: one set per instance
    fn.__doc__ = template.__doc__
    return kernel(fn, parallel=True)


def _embed(out, ids, wp, wsp, scale):
    """out (T, K) = rows ids[t] of the matrix (a tied embedding table), dequantized, times
    scale: ROW_VALUE(wp, wsp, g, b, r, j, scale) gives each value."""
    K = out.shape[1]
    sc = np.float32(scale)
    for t in prange(ids.shape[0]):
        g = ids[t] // ROWS
        r = ids[t] % ROWS
        for c in range(K):
            out[t, c] = ROW_VALUE(wp, wsp, g, c // QKX, r, c % QKX, sc)  # noqa: F821


def _products(fmt, value):
    """({mode: (gemv, gemm)}, embed) of a packed format (a simd._Fmt); `value(wp, wsp, g, b,
    r, j, scale)` -> the float32 weight of row r, column j of block b in group g, times
    scale (for embed)."""
    geo = GEOMETRY[fmt.name]
    bound = dict(BLOCK_BYTES=geo.block_bytes, WSP_ROWS=geo.wsp_rows, QKX=geo.qk,
                 NSUM=16 if geo.act == "q8_k" else 1)
    paths = {}
    for mode in simd.MODES:
        gemm_x = _float_activations if mode == "portable" else _int8_activations
        sums = {"min": k_min_sums, "bias": bias_sums, None: _same_sums}[
            simd.gemm_sums(fmt, mode)]
        paths[mode] = (
            _instantiate(_gemv, f"{fmt.name}p_gemv_{mode}", CORE=simd.core(fmt, mode, True),
                         **bound),
            _instantiate(_gemm, f"{fmt.name}p_gemm_{mode}", CORE=simd.core(fmt, mode),
                         PREPARE=gemm_x, SUMS=sums,
                         BIAS=fmt.bias, **bound))
    embed = _instantiate(_embed, f"{fmt.name}p_embed", ROW_VALUE=value, QKX=geo.qk)
    return paths, embed


@kernel
def _q8_value(wp, wsp, g, b, r, j, sc):
    code = np.int32(wp[g, b, 64 * (j // 4) + 4 * r + j % 4]) - 128
    return np.float32(code) * (h2f(wsp[g, b, r]) * sc)


@kernel
def _q4_value(wp, wsp, g, b, r, j, sc):
    byte = np.int32(wp[g, b, 64 * ((j % 16) // 4) + 4 * r + j % 4])
    code = (byte >> 4 if j >= 16 else byte & 15) - 8
    return np.float32(code) * (h2f(wsp[g, b, r]) * sc)


@kernel
def _q45_code(wp, g, b, r, j, high):
    """Q4_1 / Q5_0 / Q5_1 code of column j (0..31): nibble, plus the high bit if `high`."""
    s, i = (j % 16) // 4, j % 4
    byte = np.int32(wp[g, b, 64 * s + 4 * r + i])
    q = byte >> 4 if j >= 16 else byte & 15
    if high:
        q |= ((np.int32(wp[g, b, 256 + 4 * r + i]) >> (2 * s + j // 16)) & 1) << 4
    return q


# the others: the weight as gguf-py dequantizes it, times the scale

@kernel
def _q4_1_value(wp, wsp, g, b, r, j, sc):
    return (h2f(wsp[g, b, r]) * np.float32(_q45_code(wp, g, b, r, j, False)) + h2f(
        wsp[g, b, ROWS + r])) * sc


@kernel
def _q5_1_value(wp, wsp, g, b, r, j, sc):
    return (h2f(wsp[g, b, r]) * np.float32(_q45_code(wp, g, b, r, j, True)) + h2f(
        wsp[g, b, ROWS + r])) * sc


@kernel
def _q5_0_value(wp, wsp, g, b, r, j, sc):
    return h2f(wsp[g, b, r]) * np.float32(_q45_code(wp, g, b, r, j, True) - 16) * sc


@kernel
def _k4_weight(wp, wsp, g, b, r, j, high, scales):
    """Q4_K (high=False) / Q5_K weight of column j (0..255): (d sc) q - dmin m."""
    m, s, i = j // 32, (j % 32) // 4, j % 4
    byte = np.int32(wp[g, b, 512 * (m // 2) + 64 * s + 4 * r + i])
    q = byte >> 4 if m % 2 else byte & 15
    if high:
        q |= ((np.int32(wp[g, b, 2048 + 64 * s + 4 * r + i]) >> m) & 1) << 4
    d = h2f(wsp[g, b, r]) * np.float32(wp[g, b, scales + 16 * m + r])
    dm = h2f(wsp[g, b, ROWS + r]) * np.float32(wp[g, b, scales + 16 * (8 + m) + r])
    return d * np.float32(q) - dm


@kernel
def _q4_k_value(wp, wsp, g, b, r, j, sc):
    return _k4_weight(wp, wsp, g, b, r, j, False, 2048) * sc


@kernel
def _q5_k_value(wp, wsp, g, b, r, j, sc):
    return _k4_weight(wp, wsp, g, b, r, j, True, 2560) * sc


@kernel
def _q6_k_value(wp, wsp, g, b, r, j, sc):
    """Q6_K weight of column j (0..255): (d sc) (q - 32)."""
    h, q4, jj = j // 128, (j % 128) // 32, j % 32
    s, i = jj // 4, jj % 4
    lo = np.int32(wp[g, b, 64 * (16 * h + 8 * (q4 % 2) + s) + 4 * r + i])
    lo = lo >> 4 if q4 >= 2 else lo & 15
    hi = (np.int32(wp[g, b, 2048 + 64 * (8 * h + s) + 4 * r + i]) >> (2 * q4)) & 3
    u = 8 * h + 2 * q4 + jj // 16
    s6 = np.int32(wp[g, b, 3072 + 16 * u + r])
    s6 = s6 - 256 if s6 >= 128 else s6
    return (h2f(wsp[g, b, r]) * np.float32(s6)) * np.float32((lo | (hi << 4)) - 32) * sc


KERNELS, EMBED = {}, {}  # format -> simd mode -> (gemv, gemm); format -> embedding lookup
for _fmt, _value in ((simd.Q8, _q8_value), (simd.Q4, _q4_value), (simd.Q4_1, _q4_1_value),
                     (simd.Q5_0, _q5_0_value), (simd.Q5_1, _q5_1_value),
                     (simd.Q4_K, _q4_k_value), (simd.Q5_K, _q5_k_value),
                     (simd.Q6_K, _q6_k_value)):
    KERNELS[_fmt.name], EMBED[_fmt.name] = _products(_fmt, _value)
q8p_embed, q4p_embed = EMBED["q8"], EMBED["q4"]
q8p_gemv, q8p_gemm = KERNELS["q8"][simd.MODE]
q4p_gemv, q4p_gemm = KERNELS["q4"][simd.MODE]
