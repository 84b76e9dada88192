"""Slow, obvious numpy twins of every kernel in edgerope.kernels (float64 math where it helps).

Each twin takes the kernel's inputs (without the output array) and returns a new array, so a
test reads `kernel(out, *args); assert_allclose(out, naive.kernel(*args))`.
"""
import math

import numpy as np

QK = 32


# ----------------------------------------------------------------------------- int8 weights

def quantize_q8(w):
    """(wq, ws): d = max|block| / 127, q = round-half-away-from-zero(w * (1 / d))."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    nb = -(-k // QK)
    wq = np.zeros((n, k), np.int8)
    ws = np.zeros((n, nb), np.float32)
    for b in range(nb):
        blk = w[:, QK * b:QK * (b + 1)]
        d = np.abs(blk).max(axis=1) / np.float32(127)
        inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
        v = (blk * inv[:, None]).astype(np.float64)
        q = np.minimum(np.floor(np.abs(v) + 0.5), 127) * np.sign(v)
        wq[:, QK * b:QK * (b + 1)] = q.astype(np.int8)
        ws[:, b] = d
    return wq, ws


def dequantize_q8(wq, ws):
    k = wq.shape[1]
    return (wq.astype(np.float64) * np.repeat(ws.astype(np.float64), QK, axis=1)[:, :k])


def f32_gemv(x, w):
    return w.astype(np.float64) @ x.astype(np.float64)


def f32_gemm(x, w):
    return x.astype(np.float64) @ w.astype(np.float64).T


def q8_embed(ids, wq, ws, scale):
    rows = (wq[ids].astype(np.float32)
            * np.repeat(ws[ids], QK, axis=1)[:, :wq.shape[1]] * np.float32(scale))
    return rows


def f32_embed(ids, w, scale):
    return w[ids] * np.float32(scale)


# ----------------------------------------------------------------------------- norms

def rms_norm(x, w, eps, add_one):
    x64 = x.astype(np.float64)
    g = w[np.arange(x.shape[0]) % w.shape[0]].astype(np.float64)
    y = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + eps)
    return y * (1.0 + g if add_one else g)


def layer_norm(x, w, b, eps):
    x64 = x.astype(np.float64)
    rows = np.arange(x.shape[0]) % w.shape[0]
    mean = x64.mean(axis=1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=1, keepdims=True)
    return (x64 - mean) / np.sqrt(var + eps) * w[rows] + b[rows]


# ----------------------------------------------------------------------------- rope

def rope_apply(x, pos, cos, sin, ia, ib):
    y = x.astype(np.float64).copy()
    c = cos[pos].astype(np.float64)[:, None, :]   # (T, 1, npairs)
    s = sin[pos].astype(np.float64)[:, None, :]
    a, b = y[:, :, ia], y[:, :, ib]
    y[:, :, ia] = a * c - b * s
    y[:, :, ib] = b * c + a * s
    return y


def rope_shift(x, cos, sin, ia, ib):
    return rope_apply(x, np.zeros(x.shape[0], np.int64), cos[None], sin[None], ia, ib)


# ----------------------------------------------------------------------------- attention

def attention(q, k_cache, v_cache, cache_pos, k_new, v_new, q_pos, scale, window, softcap):
    T, Hq, _ = q.shape
    Hkv = k_new.shape[1]
    Dv = v_new.shape[2]
    keys = np.concatenate([k_cache, k_new]).astype(np.float64)
    vals = np.concatenate([v_cache, v_new]).astype(np.float64)
    kpos = np.concatenate([cache_pos, q_pos])
    out = np.zeros((T, Hq, Dv))
    for t in range(T):
        qp = q_pos[t]
        vis = (kpos >= 0) & (kpos <= qp)
        if window > 0:
            vis &= qp - kpos < window
        if not vis.any():
            continue
        for h in range(Hq):
            kvh = h // (Hq // Hkv)
            sc = keys[vis, kvh] @ q[t, h].astype(np.float64) * scale
            if softcap > 0:
                sc = softcap * np.tanh(sc / softcap)
            p = np.exp(sc - sc.max())
            out[t, h] = (p / p.sum()) @ vals[vis, kvh]
    return out


# ----------------------------------------------------------------------------- elementwise

def act(x, kind):
    x = x.astype(np.float64)
    if kind == 0:
        return x / (1.0 + np.exp(-x))
    if kind == 1:
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    if kind == 2:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if kind == 3:
        return np.maximum(x, 0.0) ** 2
    if kind == 4:
        return np.maximum(x, 0.0)
    raise ValueError(kind)


def act_mul(gu, kind):
    n = gu.shape[1] // 2
    return act(gu[:, :n], kind) * gu[:, n:].astype(np.float64)


def add(a, b):
    return a.astype(np.float64) + b


def add_bias(x, b):
    return x.astype(np.float64) + b[None, :]


def scale_(x, s):
    return x.astype(np.float64) * s


def softcap_(x, cap):
    return cap * np.tanh(x.astype(np.float64) / cap)


def softmax_(x):
    x = x.astype(np.float64)
    out = np.zeros_like(x)
    for r in range(x.shape[0]):
        if np.all(x[r] == -np.inf):
            continue
        e = np.exp(x[r] - x[r].max())
        out[r] = e / e.sum()
    return out


# ----------------------------------------------------------------------------- packed int8 / int4 (kernels.packed)

def fp32_to_fp16(x):
    """uint16 fp16 bit patterns of float32 x as llama.cpp's GGML_FP32_TO_FP16 computes them
    without F16C (the FP16 library's fp16_ieee_from_fp32_value), step by step in float32:
    round to nearest even, subnormals exact, overflow to inf, nan to 0x7E00."""
    f = np.asarray(x, np.float32)
    with np.errstate(over="ignore"):
        base = (np.abs(f) * np.float32(2.0 ** 112)) * np.float32(2.0 ** -110)
    w = f.view(np.uint32)
    shl1_w = w + w  # wraps: the sign bit drops out
    sign = w & np.uint32(0x80000000)
    bias = np.maximum(shl1_w & np.uint32(0xFF000000), np.uint32(0x71000000))
    base = ((bias >> np.uint32(1)) + np.uint32(0x07800000)).view(np.float32) + base
    bits = base.view(np.uint32)
    nonsign = ((bits >> np.uint32(13)) & np.uint32(0x7C00)) + (bits & np.uint32(0x0FFF))
    out = (sign >> np.uint32(16)) | np.where(shl1_w > np.uint32(0xFF000000), np.uint32(0x7E00),
                                             nonsign)
    return out.astype(np.uint16)


def f16(ws):
    """float32 scales as the packed format holds them: rounded to fp16, widened back."""
    return fp32_to_fp16(ws).view(np.float16).astype(np.float32)


def q8_0_blocks(w):
    """llama.cpp's quantize_row_q8_0_ref: per 32 values the fp16 d (from the float32
    d = amax / 127) and 32 int8 q = roundf(x * (1 / d)), 34 bytes; K a multiple of 32."""
    wq, ws = quantize_q8(w)
    n, k = wq.shape
    out = np.empty((n, k // QK, 34), np.uint8)
    out[:, :, :2] = fp32_to_fp16(ws).view(np.uint8).reshape(n, -1, 2)
    out[:, :, 2:] = wq.view(np.uint8).reshape(n, -1, QK)
    return out


def pack_q8(wq, ws):
    """(wp, wsp): rows in groups of 16, 512-byte blocks [k4 step][row][4 columns], bytes w+128;
    scales as fp16 bit patterns (uint16), zero for padding rows."""
    n, k = wq.shape
    g, nb = -(-n // 16), -(-k // QK)
    w = np.zeros((g * 16, nb * QK), np.int16)
    w[:n, :k] = wq
    wp = (w + 128).astype(np.uint8).reshape(g, 16, nb, 8, 4).transpose(0, 2, 3, 1, 4)
    s = np.zeros((g * 16, nb), np.uint16)
    s[:n] = fp32_to_fp16(ws)
    return wp.reshape(g, nb, 512), s.reshape(g, 16, nb).transpose(0, 2, 1)


def quantize_act(x):
    """(xq zero padded to whole blocks, xs, xsum = block sums of xq), rounding as quantize_q8."""
    t, k = x.shape
    nb = -(-k // QK)
    q, xs = quantize_q8(x)
    xq = np.zeros((t, nb * QK), np.int8)
    xq[:, :k] = q
    return xq, xs, xq.reshape(t, nb, QK).astype(np.int32).sum(axis=2)


def q8p_block_dots(xq, wq):
    """idot (T, N, nb) int64: exact dot of each activation block with each weight row block."""
    n, k = wq.shape
    t, kp = xq.shape
    w = np.zeros((n, kp), np.int64)
    w[:, :k] = wq
    return np.einsum("tbc,nbc->tnb", xq.astype(np.int64).reshape(t, -1, QK),
                     w.reshape(n, -1, QK))


def q8p_gemm(xq, xs, wq, ws):
    """(T, N) float64: sum over blocks of exact integer dots * ws[n, b] * xs[t, b]."""
    idot = q8p_block_dots(xq, wq).astype(np.float64)
    return (idot * ws[None].astype(np.float64) * xs[:, None, :].astype(np.float64)).sum(axis=2)


def quantize_q4_0(w):
    """llama.cpp's quantize_row_q4_0_ref, one block at a time: d = (the value of largest
    magnitude, first if tied) / -8, id = 1 / d (0 if d == 0), code = min(15, trunc(x * id +
    8.5)) in float32; returns (codes uint8 (N, nb, 32) in column order, d float32 (N, nb))."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    nb = -(-k // QK)
    codes = np.zeros((n, nb, QK), np.uint8)
    d = np.zeros((n, nb), np.float32)
    for r in range(n):
        for b in range(nb):
            x = np.zeros(QK, np.float32)
            blk = w[r, b * QK:(b + 1) * QK]
            x[:len(blk)] = blk
            amax, mx = np.float32(0), np.float32(0)
            for v in x:
                if amax < abs(v):
                    amax, mx = abs(v), v
            db = np.float32(mx / np.float32(-8))
            inv = np.float32(1) / db if db != 0 else np.float32(0)
            for j in range(QK):
                codes[r, b, j] = min(15, int(np.float32(np.float32(x[j] * inv) + np.float32(8.5))))
            d[r, b] = db
    return codes, d


def q4_0_bytes(codes):
    """Q4_0 `qs` bytes (N, nb, 16) of codes (N, nb, 32): column j low, column j + 16 high."""
    return (codes[..., :16] | (codes[..., 16:] << 4)).astype(np.uint8)


def pack_q4(codes, ws):
    """(wp, wsp) by the definition: wp[g, b, 64 s + 4 r + i] = code[16g + r, b, 4s + i] |
    code[16g + r, b, 16 + 4s + i] << 4 (padding rows code 8); scales as fp16 bits."""
    n, nb = codes.shape[:2]
    g = -(-n // 16)
    wp = np.zeros((g, nb, 256), np.uint8)
    wsp = np.zeros((g, nb, 16), np.uint16)
    bits = fp32_to_fp16(ws)
    for gi in range(g):
        for b in range(nb):
            for s in range(4):
                for r in range(16):
                    for i in range(4):
                        row = 16 * gi + r
                        lo, hi = (codes[row, b, 4 * s + i], codes[row, b, 16 + 4 * s + i]) \
                            if row < n else (8, 8)
                        wp[gi, b, 64 * s + 4 * r + i] = lo | (hi << 4)
            for r in range(16):
                if 16 * gi + r < n:
                    wsp[gi, b, r] = bits[16 * gi + r, b]
    return wp, wsp


def q4_weights(codes, k):
    """int8 (N, k) weights code - 8 (the integers the int4 kernels multiply)."""
    n = codes.shape[0]
    return (codes.astype(np.int16) - 8).astype(np.int8).reshape(n, -1)[:, :k]


def stream_sum(a):
    """kernels.stream_sum: the uint64 sum (wrapping) of the array."""
    return int(np.sum(a, dtype=np.uint64))


# ----------------------------------------------------------------------------- ggml block types

def quantize_act_k(x):
    """llama.cpp's quantize_row_q8_K_ref, one 256-block at a time: iscale = -127 / (the
    value of largest magnitude, first if tied) in float32, q = min(127, round-half-even(
    iscale * x)), d = 1 / iscale; returns (xq, xd, bsums per 16)."""
    x = np.asarray(x, np.float32)
    t, k = x.shape
    xq = np.zeros((t, k), np.int8)
    xd = np.zeros((t, k // 256), np.float32)
    for r in range(t):
        for b in range(k // 256):
            blk = x[r, 256 * b:256 * b + 256]
            mx = blk[int(np.argmax(np.abs(blk)))]
            if mx == 0:
                continue
            iscale = np.float32(np.float32(-127.0) / mx)
            xq[r, 256 * b:256 * b + 256] = np.minimum(np.rint(iscale * blk), 127)
            xd[r, b] = np.float32(1.0) / iscale
    return xq, xd, xq.reshape(t, -1, 16).astype(np.int32).sum(axis=2)


def ggml_gemm(xq, xs, qk, w):
    """(T, N) float64: activations (xq per block of qk columns times xs) times float64
    weights w (N, K) (the dequantized matrix)."""
    t = xq.shape[0]
    x = xq.astype(np.float64).reshape(t, -1, qk) * xs.astype(np.float64)[..., None]
    return x.reshape(t, -1)[:, :w.shape[1]] @ w.astype(np.float64).T
