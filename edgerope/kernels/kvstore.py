"""KV cache storage types: writing new keys / values into ring slots, reading them back.

Three element types, all (Hkv, S, D) arrays indexed [kv head, slot, channel] (head-major:
decoding streams each kv head's slots as one contiguous run of rows, not rows of 1 / Hkv of
each slot's bytes strided through memory):
- "f32": float32;
- "f16": IEEE fp16 bit patterns in uint16 (see edgerope.kernels.half), rounded to nearest;
- "int8": int8 with one float32 scale per (slot, head, block of KV_BLOCK channels) in a
  (Hkv, S, ceil(D / KV_BLOCK)) array: x = q * scale. Blocks, not one scale per head: keys
  after q/k-norms carry outlier channels (Gemma 3: channel maxima 5x the median) that would
  coarsen every other channel; per-block scales halve the error (bench/RESULTS.md).
  Key scales are *rotation-safe*: a block's scale bounds, for each rotary channel, the norm
  of its (channel, partner) pair rather than the channel alone, so re-rotating a stored key
  (context shift) never needs a larger scale: the scale stays put and pass-through channels
  keep their exact int8 values. Value scales are max|x| / 127.

`kv_load(arr, i, h, d)` reads one element as float32 (unscaled) and `kv_scale(arr, scales, i,
h, b)` its block's scale (1.0 for float types), dispatched at compile time on the array dtype;
the attention kernel multiplies each block's partial dot product (or each probability) by
the scale once instead of once per channel.
"""
import numpy as np
from numba import types
from numba.extending import overload

from edgerope.kernels.half import f2h, h2f
from edgerope.kernels.jit import FASTMATH, kernel
from edgerope.kernels.layout import KV_BLOCK
from edgerope.kernels.simd import prefetch, pv4

F16_MAX = np.float32(65504.0)  # the largest finite fp16 value

# Decoding reads each cached key and value once, long after the weights streamed through the
# caches evicted them, 4 KiB pages at a time (a page holds 1-16 rows): the hardware
# prefetchers restart at every page, so the attention loops ask for the rows about this
# many bytes ahead of the ones they compute on.
PREFETCH_BYTES = 2048


def partners(head_dim, ia, ib):
    """(D,) int64: the channel each rotary channel pairs with, -1 for pass-through ones."""
    p = np.full(head_dim, -1, np.int64)
    p[np.asarray(ia)] = ib
    p[np.asarray(ib)] = ia
    return p


def kv_load(arr, i, h, d):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_scale(arr, scales, i, h, b):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


_OPTS = {"fastmath": set(FASTMATH), "error_model": "numpy"}


@overload(kv_load, jit_options=_OPTS, inline="always")
def _ov_load(arr, i, h, d):
    if arr.dtype == types.uint16:
        return lambda arr, i, h, d: h2f(arr[h, i, d])
    if arr.dtype == types.int8:
        return lambda arr, i, h, d: np.float32(arr[h, i, d])
    return lambda arr, i, h, d: arr[h, i, d]


@overload(kv_scale, jit_options=_OPTS, inline="always")
def _ov_scale(arr, scales, i, h, b):
    if arr.dtype == types.int8:
        return lambda arr, scales, i, h, b: scales[h, i, b]
    return lambda arr, scales, i, h, b: np.float32(1.0)


def kv_dot4(q, t, h, kk, ks, j, kvh):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_dot(q, t, h, kk, ks, j, kvh):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_axpy4(out, t, h, p0, p1, p2, p3, vv, vs, j, kvh):  # pragma: no cover
    raise NotImplementedError


def kv_axpy(out, t, h, p, vv, vs, j, kvh):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_dot4x4(q, t, h, kk, ks, j, kvh):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_axpy4x4(out, t, h, p, vv, vs, j, kvh):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_pv4(out, t, h, sc, bk, vv, b0, n, kvh):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_quad_plan(q, t, h, kk, kvh):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


@kernel
def kv_ahead(arr):
    """Rows of a cache array (keys or values) to ask for ahead of the one in use: about
    PREFETCH_BYTES, at least 4."""
    return max(4, PREFETCH_BYTES // max(1, arr.shape[2] * arr.itemsize))


@kernel
def kv_prefetch(arr, j, kvh):
    """Hint that rows j..j+3 of kv head kvh of a cache array are wanted soon: one prefetch
    per 64-byte line of each, none past the last slot. Called every four keys, so the four
    rows share one loop over the row's lines."""
    row = arr.shape[2] * arr.itemsize
    s0 = arr.strides[1]
    base = j * s0 + kvh * arr.strides[0]
    if j >= 0 and j + 4 <= arr.shape[1]:
        for o in range(0, row, 64):
            prefetch(arr, base + o)
            prefetch(arr, base + s0 + o)
            prefetch(arr, base + 2 * s0 + o)
            prefetch(arr, base + 3 * s0 + o)
        return
    for i in range(max(j, 0), min(j + 4, arr.shape[1])):
        for o in range(0, row, 64):
            prefetch(arr, base + (i - j) * s0 + o)


# The attention kernel's inner loops, per element type: float types run one plain loop over
# the channels (LLVM vectorizes it); int8 runs it per block of KV_BLOCK channels and applies
# the block's scale to the partial sum (dot) or to the probability (axpy).

@overload(kv_dot4, jit_options=_OPTS)
def _ov_dot4(q, t, h, kk, ks, j, kvh):
    """The scaled dot products of query (t, h) with keys j..j+3 of kv head kvh."""
    if kk.dtype == types.int8:
        def dot4_q8(q, t, h, kk, ks, j, kvh):
            D = q.shape[2]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for b in range(ks.shape[2]):
                s0 = s1 = s2 = s3 = np.float32(0.0)
                for d in range(b * KV_BLOCK, min(D, b * KV_BLOCK + KV_BLOCK)):
                    qd = q[t, h, d]
                    s0 += qd * np.float32(kk[kvh, j, d])
                    s1 += qd * np.float32(kk[kvh, j + 1, d])
                    s2 += qd * np.float32(kk[kvh, j + 2, d])
                    s3 += qd * np.float32(kk[kvh, j + 3, d])
                a0 += s0 * ks[kvh, j, b]
                a1 += s1 * ks[kvh, j + 1, b]
                a2 += s2 * ks[kvh, j + 2, b]
                a3 += s3 * ks[kvh, j + 3, b]
            return a0, a1, a2, a3
        return dot4_q8

    def dot4(q, t, h, kk, ks, j, kvh):
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for d in range(q.shape[2]):
            qd = q[t, h, d]
            a0 += qd * kv_load(kk, j, kvh, d)
            a1 += qd * kv_load(kk, j + 1, kvh, d)
            a2 += qd * kv_load(kk, j + 2, kvh, d)
            a3 += qd * kv_load(kk, j + 3, kvh, d)
        return a0, a1, a2, a3
    return dot4


@overload(kv_dot, jit_options=_OPTS)
def _ov_dot(q, t, h, kk, ks, j, kvh):
    def dot(q, t, h, kk, ks, j, kvh):
        D = q.shape[2]
        a = np.float32(0.0)
        for b in range((D + KV_BLOCK - 1) // KV_BLOCK):
            s0 = np.float32(0.0)
            for d in range(b * KV_BLOCK, min(D, b * KV_BLOCK + KV_BLOCK)):
                s0 += q[t, h, d] * kv_load(kk, j, kvh, d)
            a += s0 * kv_scale(kk, ks, j, kvh, b)
        return a
    return dot


@overload(kv_axpy4, jit_options=_OPTS)
def _ov_axpy4(out, t, h, p0, p1, p2, p3, vv, vs, j, kvh):
    """out[t, h] += p0 v[j] + p1 v[j + 1] + p2 v[j + 2] + p3 v[j + 3]."""
    if vv.dtype == types.int8:
        def axpy4_q8(out, t, h, p0, p1, p2, p3, vv, vs, j, kvh):
            Dv = out.shape[2]
            for b in range(vs.shape[2]):
                w0 = p0 * vs[kvh, j, b]
                w1 = p1 * vs[kvh, j + 1, b]
                w2 = p2 * vs[kvh, j + 2, b]
                w3 = p3 * vs[kvh, j + 3, b]
                for d in range(b * KV_BLOCK, min(Dv, b * KV_BLOCK + KV_BLOCK)):
                    out[t, h, d] += (w0 * np.float32(vv[kvh, j, d])
                                     + w1 * np.float32(vv[kvh, j + 1, d])) \
                        + (w2 * np.float32(vv[kvh, j + 2, d])
                           + w3 * np.float32(vv[kvh, j + 3, d]))
        return axpy4_q8

    def axpy4(out, t, h, p0, p1, p2, p3, vv, vs, j, kvh):
        for d in range(out.shape[2]):
            out[t, h, d] += (p0 * kv_load(vv, j, kvh, d) + p1 * kv_load(vv, j + 1, kvh, d)) \
                + (p2 * kv_load(vv, j + 2, kvh, d) + p3 * kv_load(vv, j + 3, kvh, d))
    return axpy4


@overload(kv_axpy, jit_options=_OPTS)
def _ov_axpy(out, t, h, p, vv, vs, j, kvh):
    def axpy(out, t, h, p, vv, vs, j, kvh):
        Dv = out.shape[2]
        for b in range((Dv + KV_BLOCK - 1) // KV_BLOCK):
            w = p * kv_scale(vv, vs, j, kvh, b)
            for d in range(b * KV_BLOCK, min(Dv, b * KV_BLOCK + KV_BLOCK)):
                out[t, h, d] += w * kv_load(vv, j, kvh, d)
    return axpy


# Four query heads sharing a kv head against four keys at once (GQA): each K / V element
# loaded serves four heads, twice the arithmetic per load of the one-head loops above.

@kernel
def _dot4x4_span(q, t, h, kk, j, kvh, d0, d1):
    """The 16 unscaled dot products (query head h + r) x (key j + c), index 4 r + c, over
    channels [d0, d1)."""
    z = np.float32(0.0)
    a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = z
    a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = z
    for d in range(d0, d1):
        k0, k1 = kv_load(kk, j, kvh, d), kv_load(kk, j + 1, kvh, d)
        k2, k3 = kv_load(kk, j + 2, kvh, d), kv_load(kk, j + 3, kvh, d)
        q0, q1, q2, q3 = q[t, h, d], q[t, h + 1, d], q[t, h + 2, d], q[t, h + 3, d]
        a00 += q0 * k0
        a01 += q0 * k1
        a02 += q0 * k2
        a03 += q0 * k3
        a10 += q1 * k0
        a11 += q1 * k1
        a12 += q1 * k2
        a13 += q1 * k3
        a20 += q2 * k0
        a21 += q2 * k1
        a22 += q2 * k2
        a23 += q2 * k3
        a30 += q3 * k0
        a31 += q3 * k1
        a32 += q3 * k2
        a33 += q3 * k3
    return (a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33)


@overload(kv_dot4x4, jit_options=_OPTS)
def _ov_dot4x4(q, t, h, kk, ks, j, kvh):
    """16 scaled dot products, (query head h + r) x (key j + c) at index 4 r + c."""
    if kk.dtype == types.int8:
        def dot4x4_q8(q, t, h, kk, ks, j, kvh):
            D = q.shape[2]
            a = _dot4x4_span(q, t, h, kk, j, kvh, 0, min(D, KV_BLOCK))
            c0, c1, c2, c3 = ks[kvh, j, 0], ks[kvh, j + 1, 0], ks[kvh, j + 2, 0], ks[kvh, j + 3, 0]
            a = (a[0] * c0, a[1] * c1, a[2] * c2, a[3] * c3, a[4] * c0, a[5] * c1, a[6] * c2,
                 a[7] * c3, a[8] * c0, a[9] * c1, a[10] * c2, a[11] * c3, a[12] * c0,
                 a[13] * c1, a[14] * c2, a[15] * c3)
            for b in range(1, ks.shape[2]):
                s = _dot4x4_span(q, t, h, kk, j, kvh, b * KV_BLOCK, min(D, b * KV_BLOCK + KV_BLOCK))
                c0, c1 = ks[kvh, j, b], ks[kvh, j + 1, b]
                c2, c3 = ks[kvh, j + 2, b], ks[kvh, j + 3, b]
                a = (a[0] + s[0] * c0, a[1] + s[1] * c1, a[2] + s[2] * c2, a[3] + s[3] * c3,
                     a[4] + s[4] * c0, a[5] + s[5] * c1, a[6] + s[6] * c2, a[7] + s[7] * c3,
                     a[8] + s[8] * c0, a[9] + s[9] * c1, a[10] + s[10] * c2,
                     a[11] + s[11] * c3, a[12] + s[12] * c0, a[13] + s[13] * c1,
                     a[14] + s[14] * c2, a[15] + s[15] * c3)
            return a
        return dot4x4_q8

    return lambda q, t, h, kk, ks, j, kvh: _dot4x4_span(q, t, h, kk, j, kvh, 0, q.shape[2])


@overload(kv_quad_plan, jit_options=_OPTS)
def _ov_quad_plan(q, t, h, kk, kvh):
    """(usable, element offsets of query heads h..h+3 of query t, element offset of key 0
    of kv head kvh, elements from one key to the next): how simd.dot4x4 reads four heads
    against four keys. Not usable for int8 keys (their block scales) or for rows that are not
    whole contiguous 16-channel vectors."""
    if kk.dtype == types.int8:
        return lambda q, t, h, kk, kvh: (False, (0, 0, 0, 0), 0, 0)

    def plan(q, t, h, kk, kvh):
        if q.shape[2] % 16 != 0 or q.strides[2] != 4 or kk.strides[2] != kk.itemsize:
            return (False, (0, 0, 0, 0), 0, 0)
        qh = q.strides[1] // 4
        qo = t * (q.strides[0] // 4) + h * qh
        return (True, (qo, qo + qh, qo + 2 * qh, qo + 3 * qh),
                kvh * (kk.strides[0] // kk.itemsize), kk.strides[1] // kk.itemsize)
    return plan


@overload(kv_axpy4x4, jit_options=_OPTS)
def _ov_axpy4x4(out, t, h, p, vv, vs, j, kvh):
    """out[t, h + r] += sum_c p[4 r + c] v[j + c] for r, c in 0..3; each head's sum is the
    expression kv_axpy4 evaluates, so a head gets the same bits either way."""
    if vv.dtype == types.int8:
        def axpy4x4_q8(out, t, h, p, vv, vs, j, kvh):
            Dv = out.shape[2]
            for b in range(vs.shape[2]):
                c0, c1 = vs[kvh, j, b], vs[kvh, j + 1, b]
                c2, c3 = vs[kvh, j + 2, b], vs[kvh, j + 3, b]
                w00, w01, w02, w03 = p[0] * c0, p[1] * c1, p[2] * c2, p[3] * c3
                w10, w11, w12, w13 = p[4] * c0, p[5] * c1, p[6] * c2, p[7] * c3
                w20, w21, w22, w23 = p[8] * c0, p[9] * c1, p[10] * c2, p[11] * c3
                w30, w31, w32, w33 = p[12] * c0, p[13] * c1, p[14] * c2, p[15] * c3
                for d in range(b * KV_BLOCK, min(Dv, b * KV_BLOCK + KV_BLOCK)):
                    v0 = np.float32(vv[kvh, j, d])
                    v1 = np.float32(vv[kvh, j + 1, d])
                    v2 = np.float32(vv[kvh, j + 2, d])
                    v3 = np.float32(vv[kvh, j + 3, d])
                    out[t, h, d] += (w00 * v0 + w01 * v1) + (w02 * v2 + w03 * v3)
                    out[t, h + 1, d] += (w10 * v0 + w11 * v1) + (w12 * v2 + w13 * v3)
                    out[t, h + 2, d] += (w20 * v0 + w21 * v1) + (w22 * v2 + w23 * v3)
                    out[t, h + 3, d] += (w30 * v0 + w31 * v1) + (w32 * v2 + w33 * v3)
        return axpy4x4_q8

    def axpy4x4(out, t, h, p, vv, vs, j, kvh):
        p00, p01, p02, p03, p10, p11, p12, p13 = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
        p20, p21, p22, p23 = p[8], p[9], p[10], p[11]
        p30, p31, p32, p33 = p[12], p[13], p[14], p[15]
        for d in range(out.shape[2]):
            v0, v1 = kv_load(vv, j, kvh, d), kv_load(vv, j + 1, kvh, d)
            v2, v3 = kv_load(vv, j + 2, kvh, d), kv_load(vv, j + 3, kvh, d)
            out[t, h, d] += (p00 * v0 + p01 * v1) + (p02 * v2 + p03 * v3)
            out[t, h + 1, d] += (p10 * v0 + p11 * v1) + (p12 * v2 + p13 * v3)
            out[t, h + 2, d] += (p20 * v0 + p21 * v1) + (p22 * v2 + p23 * v3)
            out[t, h + 3, d] += (p30 * v0 + p31 * v1) + (p32 * v2 + p33 * v3)
    return axpy4x4


@overload(kv_pv4, jit_options=_OPTS)
def _ov_pv4(out, t, h, sc, bk, vv, b0, n, kvh):
    """Heads h..h+3 of query t: out[t, h + r] += sum_c sc[r bk + c] v[b0 + c] over the n
    keys from b0, all of them visible (simd.pv4: the four rows in registers while the values
    stream). True if done; False (nothing done) for int8 values, whose block scales the
    caller applies, or rows that are not contiguous."""
    if vv.dtype == types.int8:
        return lambda out, t, h, sc, bk, vv, b0, n, kvh: False

    def pv(out, t, h, sc, bk, vv, b0, n, kvh):
        Dv = out.shape[2]
        if Dv % 16 != 0 or out.strides[2] != 4 or vv.strides[2] != vv.itemsize \
                or sc.strides[0] != 4:
            return False
        os, oh = out.strides[0] // 4, out.strides[1] // 4
        o = t * os + h * oh
        ldv = vv.strides[1] // vv.itemsize
        pv4(out, (o, o + oh, o + 2 * oh, o + 3 * oh), sc, (0, bk, 2 * bk, 3 * bk), vv,
            b0 * ldv + kvh * (vv.strides[0] // vv.itemsize), ldv, n, Dv, kv_ahead(vv))
        return True
    return pv


@kernel
def _slot(n, sinks, S):
    """Ring slot of the n-th token ever stored: the first `sinks` stay, the rest cycle."""
    return n if n < sinks else sinks + (n - sinks) % (S - sinks)


@kernel
def _q8_row(dst, dsc, s, h, x, t, partner):
    """Quantize x[t, h, :] into dst[h, s, :], one scale per block bounding |x_c| (and the
    pair norm for rotary channels: partner[c] >= 0)."""
    D = x.shape[2]
    for cb in range(0, D, KV_BLOCK):
        ce = min(D, cb + KV_BLOCK)
        m = np.float32(0.0)
        for c in range(cb, ce):
            a = x[t, h, c]
            if partner.shape[0] and partner[c] >= 0:
                b = x[t, h, partner[c]]
                m = max(m, np.float32(np.sqrt(a * a + b * b)))
            else:
                m = max(m, abs(a))
        d = np.float32(np.float64(m) / 127.0)  # correctly rounded (fastmath would not be)
        dsc[h, s, cb // KV_BLOCK] = d
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        for c in range(cb, ce):
            r = np.float32(np.round(x[t, h, c] * inv))
            dst[h, s, c] = np.int8(min(max(r, np.float32(-127.0)), np.float32(127.0)))


def kv_put(arr, scales, s, h, x, t, partner):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


def kv_reput(arr, scales, s, h, x, i):  # pragma: no cover - replaced inside kernels
    raise NotImplementedError


@overload(kv_put, jit_options=_OPTS)
def _ov_put(arr, scales, s, h, x, t, partner):
    """arr[h, s, :] = x[t, h, :] in arr's type (int8: new rotation-safe scales); returns how
    many values were out of the type's range (fp16: |x| > F16_MAX, stored as +-F16_MAX, not
    as an infinity that would turn every score of the key into NaN)."""
    if arr.dtype == types.int8:
        def put_q8(arr, scales, s, h, x, t, partner):
            _q8_row(arr, scales, s, h, x, t, partner)
            return 0
        return put_q8
    if arr.dtype == types.uint16:
        def put_f16(arr, scales, s, h, x, t, partner):
            n = 0
            for c in range(arr.shape[2]):
                v = x[t, h, c]
                a = min(max(v, -F16_MAX), F16_MAX)
                n += a != v
                arr[h, s, c] = f2h(a)
            return n
        return put_f16

    def put_f32(arr, scales, s, h, x, t, partner):
        for c in range(arr.shape[2]):
            arr[h, s, c] = x[t, h, c]
        return 0
    return put_f32


@overload(kv_reput, jit_options=_OPTS)
def _ov_reput(arr, scales, s, h, x, i):
    """arr[h, s, :] = x[i, h, :] keeping the row's scales (int8: round(x / scale), clamped;
    exact for values already on the grid); returns the count kv_put does (int8: 0, its
    rotation-safe scales leave room for any rotation)."""
    if arr.dtype == types.int8:
        def reput_q8(arr, scales, s, h, x, i):
            for c in range(arr.shape[2]):
                d = scales[h, s, c // KV_BLOCK]
                inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
                r = np.float32(np.round(x[i, h, c] * inv))
                arr[h, s, c] = np.int8(min(max(r, np.float32(-127.0)), np.float32(127.0)))
            return 0
        return reput_q8
    return lambda arr, scales, s, h, x, i: kv_put(arr, scales, s, h, x, i, None)


@kernel
def kv_store(kc, vc, ks, vs, cpos, k_new, v_new, q_pos, n0, sinks, partner):
    """Write tokens t = 0..T-1 (stream index n0 + t, position q_pos[t]) into their ring slots.

    kc / vc: the cache arrays (any KV dtype); ks / vs: their scales (`scale_shape`);
    partner: the rotary pairing of the key channels (`partners`; int8 key scales cover it).
    Returns the number of values beyond the element type's range (stored saturated)."""
    T, H, _ = k_new.shape
    S = kc.shape[1]
    n = 0
    for t in range(T):
        s = _slot(n0 + t, sinks, S)
        cpos[s] = q_pos[t]
        for h in range(H):
            n += kv_put(kc, ks, s, h, k_new, t, partner)
            n += kv_put(vc, vs, s, h, v_new, t, partner[:0])
    return n


@kernel
def kv_dequant(out, kc, ks, slots):
    """out (n, Hkv, D) float32 = the rows of slots `slots` of kc (any KV dtype), token-major,
    for shifting / tests."""
    for i in range(slots.shape[0]):
        s = slots[i]
        for h in range(kc.shape[0]):
            for c in range(kc.shape[2]):
                out[i, h, c] = kv_load(kc, s, h, c) * kv_scale(kc, ks, s, h, c // KV_BLOCK)


@kernel
def kv_requant(kc, ks, slots, x):
    """Write float32 rows x (n, Hkv, D) back into slots `slots` of kc, keeping each row's
    scales. Returns the number of values beyond the element type's range (stored saturated:
    a re-rotated pair can put more of its length on one channel than either had)."""
    n = 0
    for i in range(slots.shape[0]):
        for h in range(kc.shape[0]):
            n += kv_reput(kc, ks, slots[i], h, x, i)
    return n
