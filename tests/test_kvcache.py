"""KV cache element types, ring slots with sinks, and context shift (edgerope.engine.cache,
edgerope.kernels.kvstore / half), against numpy twins."""
import warnings

import numpy as np
import pytest

from edgerope import kernels as K
from edgerope.engine.cache import KV_TYPES, LayerCache, layer_capacity
from edgerope.kernels import half
from edgerope.kernels.kvstore import kv_dequant, partners
from edgerope.kernels.layout import KV_BLOCK
from edgerope.archs.rope import RopeSpec

import naive

SPECS = {  # the three channel sets of rope.md: prefix half-split, interleaved, proportional
    "prefix": RopeSpec(32, 16, 1e4, "half"),
    "interleaved": RopeSpec(32, 16, 1e4, "interleaved"),
    "proportional": RopeSpec(32, 32, 1e4, "half", rope_type="proportional",
                             partial_rotary_factor=0.25),
}


def pairs(spec):
    ia, ib = spec.pairs()
    return ia.astype(np.int64), ib.astype(np.int64)


def randn(r, *shape):
    return r.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------- fp16 scalars

@pytest.mark.parametrize("hardware", [True, False])
def test_half_conversions_match_numpy(hardware):
    """h2f over every finite pattern; f2h on random values, all halves, overflow and exact
    midpoints (ties to even) -- the hardware and the integer versions alike."""
    import numba
    h2f, f2h = half.make(hardware)

    @numba.njit
    def dec(out, h):
        for i in range(h.size):
            out[i] = h2f(h[i])

    @numba.njit
    def enc(out, x):
        for i in range(x.size):
            out[i] = f2h(x[i])

    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    ref = h.view(np.float16).astype(np.float32)
    fin = np.isfinite(ref)
    out = np.empty(65536, np.float32)
    dec(out, h)
    np.testing.assert_array_equal(out[fin].view(np.uint32), ref[fin].view(np.uint32))
    r = np.random.default_rng(0)
    vals = ref[fin & (ref >= 0)].astype(np.float64)
    vals.sort()
    mids = ((vals[:-1] + vals[1:]) / 2).astype(np.float32)  # exact ties in float32
    x = np.concatenate([randn(r, 20000) * s for s in (1e-7, 1e-4, 1.0, 1e3, 1e5)]
                       + [ref[fin], mids, -mids,
                          np.array([65519, 65520, 1e6, np.inf, -np.inf], np.float32)])
    o = np.empty(x.size, np.uint16)
    enc(o, x)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(o, x.astype(np.float16).view(np.uint16))


# ----------------------------------------------------------------------------- storing

def twin_store(kv_type, x, ia=(), ib=()):
    """(stored float32 values, raw elements, scales) of x (H, D) the numpy way."""
    if kv_type == "f32":
        return x, x, None
    if kv_type == "f16":
        h = x.astype(np.float16)
        return h.astype(np.float32), h.view(np.uint16), None
    mag = np.abs(x)
    if len(ia):  # rotary channels: bound the pair norm
        pn = np.sqrt(x[..., ia] ** 2 + x[..., ib] ** 2)
        mag[..., ia] = pn
        mag[..., ib] = pn
    H, D = x.shape
    nb = -(-D // KV_BLOCK)
    d = np.stack([mag[:, b * KV_BLOCK:(b + 1) * KV_BLOCK].max(-1) for b in range(nb)], -1)
    d = (d.astype(np.float64) / 127).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    inv_c, d_c = np.repeat(inv, KV_BLOCK, -1)[:, :D], np.repeat(d, KV_BLOCK, -1)[:, :D]
    q = np.clip(np.round(x * inv_c), -127, 127).astype(np.int8)
    return q.astype(np.float32) * d_c, q, d


@pytest.mark.parametrize("kv_type", KV_TYPES)
def test_store_matches_twin_and_slots(kv_type):
    r = np.random.default_rng(1)
    S, H, D, sinks = 7, 2, 80, 2  # 80 channels: blocks of 32, 32, 16
    ia, ib = pairs(RopeSpec(80, 40, 1e4, "half"))
    part = partners(D, ia, ib)
    c = LayerCache(S, H, D, None, kv_type, sinks)
    k, v = randn(r, 20, H, D) * 3, randn(r, 20, H, D)
    pos = np.arange(100, 120, dtype=np.int64)
    c.store(k[:3], v[:3], pos[:3], part)      # a chunk
    for t in range(3, 9):                       # then tokens one by one
        c.store(k[t:t + 1], v[t:t + 1], pos[t:t + 1], part)
    c.store(k[9:20], v[9:20], pos[9:20], part)  # a chunk longer than the ring
    # slots: tokens 0, 1 stay (sinks); the ring of 5 holds the last 5 tokens, n % 5 order
    want = {0: 0, 1: 1}
    for n in range(15, 20):
        want[sinks + (n - sinks) % (S - sinks)] = n
    assert c.n == 20
    for slot, n in want.items():
        assert c.pos[slot] == pos[n]
        kf, kraw, kd = twin_store(kv_type, k[n], ia, ib)
        vf, vraw, vd = twin_store(kv_type, v[n])
        np.testing.assert_array_equal(c.k[:, slot], kraw)
        np.testing.assert_array_equal(c.v[:, slot], vraw)
        if kv_type == "int8":
            # (the pair norms may round differently: fused multiply-adds)
            np.testing.assert_allclose(c.ks[:, slot], kd, rtol=1e-6)
            np.testing.assert_array_equal(c.vs[:, slot], vd)
        back = np.empty((1, H, D), np.float32)
        kv_dequant(back, c.k, c.ks, np.array([slot]))
        np.testing.assert_allclose(back[0], kf, rtol=1e-6, atol=1e-7)


def test_f16_store_saturates_out_of_range_values_and_warns_once(monkeypatch):
    """An f16 cache stores |x| > 65504 as +-65504 (an infinite key would make every score
    NaN) and says so once; f32 keeps the values, silently."""
    from edgerope.engine import cache as cache_mod
    from edgerope.errors import EdgeropeWarning
    monkeypatch.setattr(cache_mod, "_saturated_warned", False)
    H, D = 2, 8
    k = np.zeros((2, H, D), np.float32)
    k[0, 0, :4] = [1e6, -7e4, 65504.0, -3.0]
    k[1, 1, 5] = np.inf
    v = -k
    part = np.full(D, -1, np.int64)
    c32 = LayerCache(4, H, D, None, "f32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c32.store(k, v, np.arange(2, dtype=np.int64), part)
    np.testing.assert_array_equal(c32.k[:, :2], k.transpose(1, 0, 2))
    c16 = LayerCache(4, H, D, None, "f16")
    with pytest.warns(EdgeropeWarning, match=r"beyond fp16's range .* --kv-type f32"):
        c16.store(k, v, np.arange(2, dtype=np.int64), part)
    got = np.empty((2, H, D), np.float32)
    kv_dequant(got, c16.k, c16.ks, np.arange(2))
    want = np.clip(k, -65504, 65504)
    np.testing.assert_array_equal(got, want)
    kv_dequant(got, c16.v, c16.vs, np.arange(2))
    np.testing.assert_array_equal(got, -want)
    with warnings.catch_warnings():  # once a process
        warnings.simplefilter("error")
        c16.store(k, v, np.arange(2, 4, dtype=np.int64), part)


def test_f16_shift_saturates_rerotated_keys_and_warns(monkeypatch):
    """A context shift re-rotates the f16 keys it keeps: a pair (60000, 60000) is stored
    exactly, but turned by the shift's angle one of its channels can pass 65504. It is stored
    saturated, as a fresh key would be, and the same one warning is given."""
    from edgerope.engine import cache as cache_mod
    from edgerope.errors import EdgeropeWarning
    monkeypatch.setattr(cache_mod, "_saturated_warned", False)
    spec = SPECS["prefix"]
    ia, ib = pairs(spec)
    S, H, D, keep, n = 8, 1, spec.head_dim, 1, 1
    k = np.zeros((S, H, D), np.float32)
    k[:, 0, ia[0]] = k[:, 0, ib[0]] = 60000.0  # pair 0 turns by one radian a position
    c = LayerCache(S, H, D, None, "f16", keep)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in range when stored
        c.store(k, k, np.arange(S, dtype=np.int64), partners(D, ia, ib))
    want = k[keep + n:].copy()
    K.rope_shift(want, *spec.shift(-n), ia, ib)
    assert np.abs(want).max() > 65504  # the case does saturate
    with pytest.warns(EdgeropeWarning, match=r"beyond fp16's range"):
        c.shift(keep, n, *spec.shift(-n), ia, ib)
    got = np.empty_like(want)
    kv_dequant(got, c.k, c.ks, np.arange(keep + n, S))
    np.testing.assert_allclose(got, np.clip(want, -65504, 65504), rtol=1e-3)


def test_layer_capacity():
    assert layer_capacity(None, 512, 4) == 512
    assert layer_capacity(8, 512, 4) == 12     # window + sinks
    assert layer_capacity(512, 512, 4) == 512  # a window as long as the context: global
    assert layer_capacity(510, 512, 4) == 512


@pytest.mark.parametrize("kv_type", ["f16", "int8"])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (5, 30.0)])
@pytest.mark.parametrize("hq,hkv,D", [(4, 2, 32), (8, 2, 80), (6, 1, 48)])
def test_attention_over_quantized_cache(kv_type, window, softcap, hq, hkv, D):
    """The kernel on an f16 / int8 cache equals the float64 twin over the dequantized cache:
    one head at a time (group 2) and four at once (group 4; group 6 = four + two), one and
    several int8 channel blocks, a partial last block."""
    r = np.random.default_rng(2)
    S, T, Hq, Hkv = 37, 3, hq, hkv
    c = LayerCache(S, Hkv, D, None, kv_type)
    kc, vc = randn(r, S, Hkv, D), randn(r, S, Hkv, D)
    cpos = r.permutation(40)[:S].astype(np.int64)
    ia, ib = pairs(SPECS["interleaved"])
    c.store(kc, vc, cpos, partners(D, ia, ib))
    c.pos[[3, 9]] = -1  # holes
    q, kn, vn = randn(r, T, Hq, D), randn(r, T, Hkv, D), randn(r, T, Hkv, D)
    qpos = np.arange(40, 40 + T, dtype=np.int64)
    out = np.empty((T, Hq, D), np.float32)
    K.attention(out, q, (c.k, c.v, c.ks, c.vs, c.pos), (kn, vn, qpos), (0.2, window, softcap),
                np.zeros((3, S + T), np.float32))
    kd, vd = np.empty_like(kc), np.empty_like(vc)
    kv_dequant(kd, c.k, c.ks, np.arange(S))
    kv_dequant(vd, c.v, c.vs, np.arange(S))
    ref = naive.attention(q, kd, vd, c.pos, kn, vn, qpos, 0.2, window, softcap)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- shifting

@pytest.mark.parametrize("kv_type", KV_TYPES)
@pytest.mark.parametrize("channels", list(SPECS))
def test_shift_equals_rotation_at_new_position(kv_type, channels):
    """Keys roped at p and shifted by -n equal keys roped at p - n on the rotary channels;
    pass-through channels (and int8 scales) stay bit-identical; dropped slots are emptied."""
    spec = SPECS[channels]
    ia, ib = pairs(spec)
    r = np.random.default_rng(3)
    S, H, D, keep, n = 24, 2, spec.head_dim, 3, 7
    raw = randn(r, S, H, D)
    pos = np.arange(S, dtype=np.int64)
    cos, sin = spec.table(S)
    roped = raw.copy()
    K.rope_apply(roped, pos, cos, sin, ia, ib)
    c = LayerCache(S, H, D, None, kv_type, keep)
    c.store(roped, raw, pos, partners(D, ia, ib))
    k_before, ks_before = c.k.copy(), c.ks.copy()
    c.shift(keep, n, *spec.shift(-n), ia, ib)
    assert (c.pos[:keep] == np.arange(keep)).all()
    assert (c.pos[keep:keep + n] == -1).all()
    np.testing.assert_array_equal(c.pos[keep + n:], np.arange(keep, S - n))
    moved = np.arange(keep + n, S)
    got = np.empty((len(moved), H, D), np.float32)
    kv_dequant(got, c.k, c.ks, moved)
    want = raw[moved].copy()
    K.rope_apply(want, moved - n, cos, sin, ia, ib)
    rot = np.union1d(ia, ib)
    tol = {"f32": 1e-5, "f16": 2e-3, "int8": 2e-2}[kv_type]
    scale = np.abs(want).max()
    np.testing.assert_allclose(got[..., rot], want[..., rot], atol=tol * scale)
    still = np.setdiff1d(np.arange(D), rot)
    if len(still):
        np.testing.assert_array_equal(c.k[:, moved][..., still], k_before[:, moved][..., still])
    np.testing.assert_array_equal(c.k[:, :keep], k_before[:, :keep])  # sinks untouched
    np.testing.assert_array_equal(c.ks, ks_before)


@pytest.mark.parametrize("channels", list(SPECS))
def test_shift_kernel_identity_property(channels):
    """rope_shift by delta == rotating at p + delta, over random positions and deltas."""
    spec = SPECS[channels]
    ia, ib = pairs(spec)
    r = np.random.default_rng(4)
    P = 300
    cos, sin = spec.table(P)
    for _ in range(20):
        p = int(r.integers(50, P))
        d = -int(r.integers(1, 50))
        x = randn(r, 1, 3, spec.head_dim)
        a = x.copy()
        K.rope_apply(a, np.array([p]), cos, sin, ia, ib)
        K.rope_shift(a, *spec.shift(d), ia, ib)
        b = x.copy()
        K.rope_apply(b, np.array([p + d]), cos, sin, ia, ib)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        rot = np.union1d(ia, ib)
        still = np.setdiff1d(np.arange(spec.head_dim), rot)
        np.testing.assert_array_equal(a[..., still], x[..., still])


@pytest.mark.parametrize("kv_type", ["f16", "int8"])
def test_attention_tiles_over_quantized_cache(kv_type):
    """The prefill tiles stage f16 / int8 keys and values with their block scales: equal to
    the twin over the dequantized cache (several channel blocks, a partial last one)."""
    r = np.random.default_rng(4)
    S, T, Hq, Hkv, D = 90, 40, 8, 2, 80
    c = LayerCache(S, Hkv, D, None, kv_type)
    kc, vc = randn(r, S, Hkv, D), randn(r, S, Hkv, D)
    cpos = r.permutation(100)[:S].astype(np.int64)
    ia, ib = pairs(SPECS["interleaved"])
    c.store(kc, vc, cpos, partners(D, ia, ib))
    c.pos[[3, 9, 70]] = -1
    q, kn, vn = randn(r, T, Hq, D), randn(r, T, Hkv, D), randn(r, T, Hkv, D)
    qpos = np.arange(100, 100 + T, dtype=np.int64)
    out = np.empty((T, Hq, D), np.float32)
    stage = np.zeros((2, K.att_stage_len(D, D)), np.float32)
    K.attention_tiles(out, q, (c.k, c.v, c.ks, c.vs, c.pos), (kn, vn, qpos), (0.2, 60, 0.0),
                      stage, np.zeros((2, T * Hq), np.float32),
                      np.zeros((2, 3, K.ATT_MAX_ROWS), np.int64))
    kd, vd = np.empty_like(kc), np.empty_like(vc)
    kv_dequant(kd, c.k, c.ks, np.arange(S))
    kv_dequant(vd, c.v, c.vs, np.arange(S))
    ref = naive.attention(q, kd, vd, c.pos, kn, vn, qpos, 0.2, 60, 0.0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_type", ["f16", "int8"])
def test_attention_rows_over_quantized_caches(kv_type):
    """A batch's decode step: one query per sequence, each over its own f16 / int8 cache
    (stacked on a leading axis, as engine.batch lays them out): the twin per sequence over
    the dequantized cache."""
    r = np.random.default_rng(5)
    N, S, Hq, Hkv, D = 3, 50, 8, 2, 80
    layout = LayerCache.layout(S, Hkv, D, kv_type)
    stacked = {n: np.zeros((N,) + shape, dt) for n, (shape, dt) in layout.items()}
    caches = [LayerCache(S, Hkv, D, None, kv_type, storage={n: a[i] for n, a in
                                                            stacked.items()})
              for i in range(N)]
    ia, ib = pairs(SPECS["prefix"])
    for i, c in enumerate(caches):
        c.pos.fill(-1)
        n = 10 + 15 * i
        c.store(randn(r, n, Hkv, D), randn(r, n, Hkv, D), np.arange(n, dtype=np.int64),
                partners(D, ia, ib))
    q, kn, vn = randn(r, N, Hq, D), randn(r, N, Hkv, D), randn(r, N, Hkv, D)
    qpos = np.array([c.n for c in caches], np.int64)
    out = np.empty((N, Hq, D), np.float32)
    K.attention_rows(out, q, tuple(stacked[n] for n in ("k", "v", "ks", "vs", "pos")),
                     (kn, vn, qpos), (0.2, 0, 0.0), np.zeros((16, S + N + Hq * D), np.float32),
                     np.arange(N, dtype=np.int64), np.array([(i, i + 1) for i in range(N)]))
    for i, c in enumerate(caches):
        kd, vd = np.empty((S, Hkv, D), np.float32), np.empty((S, Hkv, D), np.float32)
        kv_dequant(kd, c.k, c.ks, np.arange(S))
        kv_dequant(vd, c.v, c.vs, np.arange(S))
        ref = naive.attention(q[i:i + 1], kd, vd, c.pos, kn[i:i + 1], vn[i:i + 1],
                              qpos[i:i + 1], 0.2, 0, 0.0)
        np.testing.assert_allclose(out[i:i + 1], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_type", ["f32", "f16", "int8"])
def test_kv_prefetch_is_only_a_hint(kv_type):
    """kv_prefetch (the attention loops' read-ahead, four rows) changes nothing and never
    faults: rows past the last slot, before the first or partly past the end, a view of a
    larger cache, a kv head other than 0; kv_ahead asks for at least 4 rows, about
    PREFETCH_BYTES."""
    from edgerope.kernels.kvstore import PREFETCH_BYTES, kv_ahead, kv_prefetch
    dtype = {"f32": np.float32, "f16": np.uint16, "int8": np.int8}[kv_type]
    full = np.arange(40 * 3 * 24).astype(dtype).reshape(3, 40, 24)  # (Hkv, S, D)
    before = full.copy()
    view = full[:, 5:17]
    for arr in (full, view):
        for j in (-8, -2, 0, 9, 11, 37, 39, 40, 10 ** 6):
            kv_prefetch(arr, j, 2)
    np.testing.assert_array_equal(full, before)
    assert kv_ahead(full) == max(4, PREFETCH_BYTES // (24 * full.itemsize))
    assert kv_ahead(np.zeros((1, 4, 4096), np.float32)) == 4


@pytest.mark.parametrize("kv_type", ["f32", "f16"])
@pytest.mark.parametrize("D", [16, 64, 256])
def test_dot4x4_matches_numpy(kv_type, D):
    """simd.dot4x4 (decoding's four heads x four keys, float or fp16 keys) against numpy in
    float64: every one of the 16 dots, at raw offsets into (t, head, channel) arrays, with a
    kv head other than 0 and keys not in a row; and the fixed summation order: the same
    bits for the same inputs wherever they sit."""
    import numba

    from edgerope.kernels.simd import dot4x4 as ir_dot4x4

    @numba.njit
    def dot4x4(q, qo, k, ko, n):
        return ir_dot4x4(q, qo, k, ko, n)

    rng = np.random.default_rng(D)
    q = rng.standard_normal((2, 8, D)).astype(np.float32)
    kf = rng.standard_normal((9, 3, D)).astype(np.float32)
    kk = kf if kv_type == "f32" else kf.astype(np.float16).view(np.uint16)
    kval = kf if kv_type == "f32" else kk.view(np.float16).astype(np.float32)
    qo = [(1 * 8 + h) * D for h in (2, 3, 4, 5)]
    keys = (0, 3, 4, 8)
    ko = [(j * 3 + 2) * D for j in keys]
    got = np.array(dot4x4(q, tuple(qo), kk, tuple(ko), D), np.float32)
    want = np.array([q[1, h].astype(np.float64) @ kval[j, 2].astype(np.float64)
                     for h in (2, 3, 4, 5) for j in keys])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(D))
    q2 = np.zeros((3, 8, D), np.float32)
    q2[2, 4:8] = q[1, 2:6]
    moved = np.array(dot4x4(q2, tuple((2 * 8 + h) * D for h in (4, 5, 6, 7)), kk,
                            tuple(ko), D), np.float32)
    np.testing.assert_array_equal(moved, got)


@pytest.mark.parametrize("kv_type", ["f32", "f16", "int8"])
@pytest.mark.parametrize("D", [48, 64, 80])
@pytest.mark.parametrize("window", [0, 100])
def test_decode_attention_register_paths(kv_type, D, window):
    """Decoding four heads of a kv head over a long cache with no holes (the blocks the
    vector paths take: simd.dot4x4 for float keys, simd.pv4 for float values; int8 stays on
    the scalar loops) equals the float64 twin over the dequantized cache; a window makes
    some blocks partly visible (the scalar loops again)."""
    r = np.random.default_rng(D + window)
    S, Hq, Hkv = 300, 8, 2
    c = LayerCache(S, Hkv, D, None, kv_type)
    ia, ib = pairs(SPECS["interleaved"])
    c.store(randn(r, S, Hkv, D), randn(r, S, Hkv, D), np.arange(S, dtype=np.int64),
            partners(D, ia, ib))
    q, kn, vn = randn(r, 1, Hq, D), randn(r, 1, Hkv, D), randn(r, 1, Hkv, D)
    qpos = np.array([S], np.int64)
    out = np.full((1, Hq, D), np.nan, np.float32)
    scratch = np.zeros((16, S + 1 + 512 + Hq * D), np.float32)
    K.attention_decode(out, q, (c.k, c.v, c.ks, c.vs, c.pos), (kn, vn, qpos),
                       (0.2, window, 0.0), scratch, S)
    kd, vd = np.empty((S, Hkv, D), np.float32), np.empty((S, Hkv, D), np.float32)
    kv_dequant(kd, c.k, c.ks, np.arange(S))
    kv_dequant(vd, c.v, c.vs, np.arange(S))
    ref = naive.attention(q, kd, vd, c.pos, kn, vn, qpos, 0.2, window, 0.0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
