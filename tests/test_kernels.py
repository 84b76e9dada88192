"""Every kernel of edgerope.kernels against its numpy twin in tests/naive.py."""
import math
import os

import numpy as np
import pytest

import edgerope.kernels as K

import naive

ODD_K = [1, 31, 33, 64, 100, 257]


def rng(seed=0):
    return np.random.default_rng(seed)


def randn(r, *shape, scale=1.0):
    return (r.standard_normal(shape) * scale).astype(np.float32)


def q8_weights(r, n, k):
    wq, ws = naive.quantize_q8(randn(r, n, k))
    return wq, ws


def assert_dot_close(out, ref, mag):
    """float32 accumulation vs a float64 reference: relative error scaled by sum |terms|."""
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=2e-6 * float(np.max(mag, initial=1.0)))


# ----------------------------------------------------------------------------- quantization

@pytest.mark.parametrize("k", ODD_K)
@pytest.mark.parametrize("n", [1, 5])
def test_quantize_matches_twin_and_round_trips(n, k):
    w = randn(rng(k), n, k, scale=3.0)
    w[0, :min(k, 32)] = 0.0  # an all-zero block
    nb = K.q8_blocks(k)
    wq = np.empty((n, k), np.int8)
    ws = np.empty((n, nb), np.float32)
    K.quantize_q8(wq, ws, w)
    tq, ts = naive.quantize_q8(w)
    np.testing.assert_array_equal(ws, ts)
    np.testing.assert_array_equal(wq, tq)
    assert np.all(wq[0, :min(k, 32)] == 0) and ws[0, 0] == 0
    assert np.abs(wq.astype(np.int32)).max() <= 127
    deq = np.empty((n, k), np.float32)
    K.dequantize_q8(deq, wq, ws)
    np.testing.assert_array_equal(deq, naive.dequantize_q8(wq, ws).astype(np.float32))
    half = np.repeat(ws, 32, axis=1)[:, :k] / 2
    assert np.all(np.abs(deq.astype(np.float64) - w) <= half * (1 + 1e-6) + 1e-30)


def test_quantize_ties_round_away_from_zero():
    row = [127.0, 0.5, 1.5, -2.5, 2.5, -0.5, 0.49999997] + [0.0] * 25 + [-254.0, 1.0]
    w = np.array([row] * 5, np.float32)  # 5 rows: the 4-row path and the 1-row tail
    wq = np.empty(w.shape, np.int8)
    ws = np.empty((5, 2), np.float32)
    K.quantize_q8(wq, ws, w)
    assert np.all(ws == [1.0, 2.0])
    assert np.all(wq[:, :7] == [127, 1, 2, -3, 3, -1, 0]) and np.all(wq[:, 32:] == [-127, 1])


# ----------------------------------------------------------------------------- matmul

@pytest.mark.parametrize("k", ODD_K)
@pytest.mark.parametrize("n", [1, 5, 17, 36])
def test_f32_gemv(n, k):
    r = rng(n * 1000 + k + 1)
    w, x = randn(r, n, k), randn(r, k)
    out = np.empty(n, np.float32)
    K.f32_gemv(out, x, w)
    assert_dot_close(out, naive.f32_gemv(x, w), np.abs(w) @ np.abs(x))


@pytest.mark.parametrize("k", ODD_K)
@pytest.mark.parametrize("t,n", [(1, 5), (4, 17), (7, 3), (19, 36)])
def test_f32_gemm(t, n, k):
    r = rng(t * 100 + n * 1000 + k + 7)
    w, x = randn(r, n, k), randn(r, t, k)
    out = np.empty((t, n), np.float32)
    K.f32_gemm(out, x, w)
    assert_dot_close(out, naive.f32_gemm(x, w), np.abs(x) @ np.abs(w).T)


@pytest.mark.parametrize("k", [31, 64, 257])
def test_f32_embed(k):
    r = rng(k)
    w = randn(r, 11, k)
    ids = np.array([3, 0, 10, 3], np.int64)
    out = np.empty((4, k), np.float32)
    K.f32_embed(out, ids, w, 2.5)
    np.testing.assert_array_equal(out, naive.f32_embed(ids, w, 2.5))


def test_thread_count_does_not_change_results():
    if K.max_threads() < 2:
        pytest.skip("needs 2 threads")
    r = rng(11)
    wq, ws = q8_weights(r, 67, 257)
    w = naive.dequantize_q8(wq, ws).astype(np.float32)
    x1, xt = randn(r, 257), randn(r, 9, 257)
    q, kc, vc = randn(r, 5, 4, 24), randn(r, 6, 2, 24), randn(r, 6, 2, 24)
    kn, vn = randn(r, 5, 2, 24), randn(r, 5, 2, 24)
    cpos, qpos = np.arange(6, dtype=np.int64), np.arange(6, 11, dtype=np.int64)

    def run():
        outs = [np.empty(67, np.float32), np.empty((9, 67), np.float32),
                np.empty((5, 4, 24), np.float32)]
        K.f32_gemv(outs[0], x1, w)
        K.f32_gemm(outs[1], xt, w)
        _attention(outs[2], q, kc, vc, cpos, kn, vn, qpos, 0.2, 0, 0.0,
                    np.zeros((3, 11), np.float32))
        return outs

    before = K.get_threads()
    try:
        K.set_threads(1)
        one = run()
        K.set_threads(2)
        two = run()
    finally:
        K.set_threads(before)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- norms

@pytest.mark.parametrize("n", ODD_K)
@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("add_one", [False, True])
def test_rms_norm(n, groups, add_one):
    r = rng(n + groups)
    x = randn(r, 6, n, scale=2.0) + 0.5
    w = randn(r, groups, n)
    out = np.empty_like(x)
    K.rms_norm(out, x, w, 1e-6, add_one)
    ref = naive.rms_norm(x, w, 1e-6, add_one)
    np.testing.assert_allclose(out, ref, rtol=2e-6, atol=1e-6)
    K.rms_norm(x, x, w, 1e-6, add_one)  # in place
    np.testing.assert_array_equal(x, out)


@pytest.mark.parametrize("n", ODD_K)
@pytest.mark.parametrize("groups", [1, 2])
def test_layer_norm(n, groups):
    r = rng(n + 10 * groups)
    x = randn(r, 4, n, scale=3.0) + 1.0
    w, b = randn(r, groups, n), randn(r, groups, n)
    out = np.empty_like(x)
    K.layer_norm(out, x, w, b, 1e-5)
    np.testing.assert_allclose(out, naive.layer_norm(x, w, b, 1e-5), rtol=2e-6, atol=2e-6)
    K.layer_norm(x, x, w, b, 1e-5)
    np.testing.assert_array_equal(x, out)


def test_norms_split_over_threads_for_long_chunks():
    """A prefill-sized chunk (past the parallel threshold) takes the split path: the twin's
    numbers, bit-identical row by row to the serial path (one row at a time)."""
    r = rng(77)
    x = randn(r, 300, 640, scale=2.0) + 0.5
    w, b = randn(r, 1, 640), randn(r, 1, 640)
    assert x.size >= 1 << 16
    for norm, args, ref in ((K.rms_norm, (w, 1e-6, True), naive.rms_norm(x, w, 1e-6, True)),
                            (K.layer_norm, (w, b, 1e-5), naive.layer_norm(x, w, b, 1e-5))):
        out = np.empty_like(x)
        norm(out, x, *args)
        np.testing.assert_allclose(out, ref, rtol=2e-6, atol=2e-6)
        rows = np.empty_like(x)
        for i in range(x.shape[0]):
            norm(rows[i:i + 1], x[i:i + 1], *args)
        np.testing.assert_array_equal(out, rows)
        y = x.copy()
        norm(y, y, *args)  # in place: its own loop (no overlap check to fail)
        np.testing.assert_array_equal(y, out)


# ----------------------------------------------------------------------------- rope

def rope_tables(npairs, n_pos, base=10000.0):
    inv = base ** (-np.arange(npairs) / npairs)
    ang = np.arange(n_pos)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32), inv


def pairings(d):
    half = np.arange(d // 2)
    rot = (d // 2) // 2 * 2  # partial rotary: first `rot` channels, half-split
    return {
        "half": (half, half + d // 2),
        "interleaved": (np.arange(0, d - 1, 2), np.arange(1, d, 2)),
        "partial": (np.arange(rot // 2), np.arange(rot // 2) + rot // 2),
        "sparse": (np.array([1, d // 2]), np.array([3, d - 1])),
    }


@pytest.mark.parametrize("d", [8, 24, 80])
@pytest.mark.parametrize("kind", ["half", "interleaved", "partial", "sparse"])
def test_rope_apply(d, kind):
    ia, ib = (a.astype(np.int64) for a in pairings(d)[kind])
    cos, sin, _ = rope_tables(len(ia), 64)
    r = rng(d)
    x = randn(r, 5, 3, d)
    pos = np.array([0, 7, 3, 63, 12], np.int64)
    y = x.copy()
    K.rope_apply(y, pos, cos, sin, ia, ib)
    np.testing.assert_allclose(y, naive.rope_apply(x, pos, cos, sin, ia, ib), rtol=1e-6,
                               atol=1e-6)
    untouched = np.setdiff1d(np.arange(d), np.concatenate([ia, ib]))
    assert np.array_equal(y[..., untouched], x[..., untouched])


def test_rope_apply_long_chunk_splits_tokens():
    """Past the parallel threshold (a prefill chunk) tokens are split over the threads: the
    twin's numbers, bit-identical to rotating one token at a time."""
    ia, ib = (a.astype(np.int64) for a in pairings(64)["half"])
    cos, sin, _ = rope_tables(len(ia), 600)
    r = rng(3)
    x = randn(r, 300, 4, 64)
    pos = r.permutation(600)[:300].astype(np.int64)
    y = x.copy()
    K.rope_apply(y, pos, cos, sin, ia, ib)
    np.testing.assert_allclose(y, naive.rope_apply(x, pos, cos, sin, ia, ib), rtol=1e-6,
                               atol=1e-6)
    z = x.copy()
    for t in range(300):
        K.rope_apply(z[t:t + 1], pos[t:t + 1], cos, sin, ia, ib)
    np.testing.assert_array_equal(y, z)


@pytest.mark.parametrize("kind", ["half", "interleaved", "partial"])
def test_rope_shift_composes(kind):
    d = 24
    ia, ib = (a.astype(np.int64) for a in pairings(d)[kind])
    cos, sin, inv = rope_tables(len(ia), 128)
    r = rng(5)
    x = randn(r, 6, 2, d)
    pos = np.array([0, 1, 5, 9, 30, 60], np.int64)
    delta = 17
    y = x.copy()
    K.rope_apply(y, pos, cos, sin, ia, ib)
    K.rope_shift(y, np.cos(delta * inv).astype(np.float32),
                 np.sin(delta * inv).astype(np.float32), ia, ib)
    z = x.copy()
    K.rope_apply(z, pos + delta, cos, sin, ia, ib)
    np.testing.assert_allclose(y, z, rtol=1e-5, atol=2e-6)
    s = x.copy()
    K.rope_shift(s, cos[delta], sin[delta], ia, ib)
    np.testing.assert_allclose(s, naive.rope_shift(x, cos[delta], sin[delta], ia, ib),
                               rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- attention

_NO_SCALES = np.ones((1, 1), np.float32)


def _hm(a):
    """A cache (..., S, Hkv, D) as the twin takes it, head-major (..., Hkv, S, D) as the
    kernels (and edgerope.engine.cache) hold it."""
    return np.ascontiguousarray(np.swapaxes(a, -3, -2))


def _attention(out, q, kc, vc, cpos, kn, vn, qpos, scale, window, softcap, scratch):
    """K.attention on a float32 cache (the scale arrays are placeholders then), with the
    twin's flat argument order and cache layout."""
    K.attention(out, q, (_hm(kc), _hm(vc), _NO_SCALES, _NO_SCALES, cpos), (kn, vn, qpos),
                (scale, window, softcap), scratch)


def attention_case(seed, T, S, Hq, Hkv, D, Dv, empty=0, p0=None):
    """Random chunk of T queries after a cache of S slots holding shuffled positions < p0."""
    r = rng(seed)
    p0 = S if p0 is None else p0
    cache_pos = r.permutation(p0)[:S].astype(np.int64)
    cache_pos[r.permutation(S)[:empty]] = -1
    q_pos = np.arange(p0, p0 + T, dtype=np.int64)
    return (randn(r, T, Hq, D), randn(r, S, Hkv, D), randn(r, S, Hkv, Dv), cache_pos,
            randn(r, T, Hkv, D), randn(r, T, Hkv, Dv), q_pos)


def check_attention(args, scale, window, softcap, chunks=3, scratch=None):
    q, v_new = args[0], args[5]
    T, Hq, _ = q.shape
    S = args[1].shape[0]
    out = np.full((T, Hq, v_new.shape[2]), np.nan, np.float32)
    if scratch is None:
        scratch = np.zeros((chunks, S + T), np.float32)
    _attention(out, *args, scale, window, softcap, scratch)
    ref = naive.attention(*args, scale, window, softcap)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (8, 2), (8, 1), (12, 2)])
@pytest.mark.parametrize("d", [24, 80])
@pytest.mark.parametrize("window", [0, 3])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
@pytest.mark.parametrize("S", [9, 41])
def test_attention_gqa_window_softcap(hq, hkv, d, window, softcap, S):
    """S = 41: scratch rows long enough for four heads at once (groups of 4, 8, 6 = 4 + 2);
    S = 9: one head at a time."""
    args = attention_case(hq * 10 + hkv + d + S, T=4, S=S, Hq=hq, Hkv=hkv, D=d, Dv=d, empty=2,
                          p0=S + 3)
    check_attention(args, 1 / math.sqrt(d), window, softcap)


@pytest.mark.parametrize("hq,hkv,window,softcap", [(4, 1, 0, 0.0), (8, 2, 300, 0.0),
                                                   (12, 2, 0, 20.0), (8, 1, 0, 0.0)])
@pytest.mark.parametrize("n_slots", [1100, 1000, 200, 50])
@pytest.mark.parametrize("D", [40, 64])
def test_attention_decode_splits_long_caches(hq, hkv, window, softcap, n_slots, D):
    """attention_decode: one query over the first n_slots slots of a cache (the rest never
    written): a long run of slots is split into parts of ~DECODE_SPLIT computed in parallel
    and merged (scratch rows beyond the first are used); equals the twin, with holes,
    windows and soft-capping; the same bits for 1 and 2 threads; 50 slots: one part
    (attention). D = 64: four heads' dots and sums in vector registers (simd.dot4x4 / pv4)
    for blocks without holes, the scalar loops for the rest; D = 40: scalar loops only."""
    S = 1100
    q, kc, vc, cpos, kn, vn, qpos = attention_case(hq + hkv + window, T=1, S=S, Hq=hq, Hkv=hkv,
                                                   D=D, Dv=D, empty=7, p0=S + 50)
    seen = cpos.copy()
    seen[n_slots:] = -1
    kc[n_slots:], vc[n_slots:] = np.nan, np.nan  # never read
    ref = naive.attention(q, kc, vc, seen, kn, vn, qpos, 0.15, window, softcap)
    outs = []
    for threads in (1, 2) if K.max_threads() >= 2 else (1,):
        before = K.get_threads()
        K.set_threads(threads)
        try:
            scratch = np.full((16, S + 1 + 512 + hq * D), np.nan, np.float32)
            out = np.full((1, hq, D), np.nan, np.float32)
            K.attention_decode(out, q, (_hm(kc), _hm(vc), _NO_SCALES, _NO_SCALES, cpos),
                               (kn, vn, qpos), (0.15, window, softcap), scratch, n_slots)
        finally:
            K.set_threads(before)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        group = hq // hkv
        runs = hkv * -(-group // min(group, 8))  # the unsplit kernel's scratch rows
        assert np.isnan(scratch[runs]).all() == (n_slots <= K.DECODE_SPLIT)
        outs.append(out)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_attention_head_with_only_infinite_logits_gets_zeros():
    """Four heads at once: a head whose every dot product overflows to -inf sees no key
    (zeros, as one head alone would) and leaves the other three of its group exact."""
    r = rng(5)
    T, S, D = 2, 40, 16
    q, vc, vn = randn(r, T, 4, D), randn(r, S, 1, D), randn(r, T, 1, D)
    kc, kn = np.abs(randn(r, S, 1, D)), np.abs(randn(r, T, 1, D))
    q[:, 1, :] = -3e38
    cpos, qpos = np.arange(S, dtype=np.int64), np.arange(S, S + T, dtype=np.int64)
    out = np.full((T, 4, D), np.nan, np.float32)
    _attention(out, q, kc, vc, cpos, kn, vn, qpos, 0.25, 0, 0.0,
               np.zeros((3, S + T + 64), np.float32))
    assert (out[:, 1] == 0).all()
    ref = naive.attention(q, kc, vc, cpos, kn, vn, qpos, 0.25, 0, 0.0)
    np.testing.assert_allclose(out[:, [0, 2, 3]], ref[:, [0, 2, 3]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [1, 5])
def test_attention_empty_cache(t):
    args = attention_case(t, T=t, S=0, Hq=4, Hkv=2, D=16, Dv=16)
    assert args[1].shape == (0, 2, 16)
    check_attention(args, 0.25, 0, 0.0, chunks=2)


def test_attention_all_slots_empty_and_dv_differs():
    args = attention_case(2, T=3, S=5, Hq=4, Hkv=1, D=24, Dv=12, empty=5, p0=5)
    check_attention(args, 0.3, 2, 0.0, chunks=7)  # more chunks than tasks is fine


def test_attention_query_without_visible_key_gets_zeros():
    q, kc, vc, cpos, kn, vn, _ = attention_case(4, T=2, S=3, Hq=2, Hkv=2, D=8, Dv=8)
    qpos = np.array([-1, 3], np.int64)   # a padding query sees nothing, not even itself
    out = check_attention((q, kc, vc, cpos, kn, vn, qpos), 0.5, 0, 0.0)
    assert np.all(out[0] == 0)


@pytest.mark.parametrize("width", [0, 100])
@pytest.mark.parametrize("hq,hkv", [(8, 2), (4, 4), (16, 1)])
def test_attention_long_cache_in_blocks(width, hq, hkv):
    """Several key blocks, a ring-buffer-like cache with holes, exact or wider scratch rows."""
    args = attention_case(width + hq, T=5, S=300, Hq=hq, Hkv=hkv, D=16, Dv=16, empty=40,
                          p0=400)
    T, S = 5, 300
    for window, softcap in [(0, 0.0), (150, 20.0)]:
        ref = naive.attention(*args, 0.25, window, softcap)
        out = np.empty((T, hq, 16), np.float32)
        _attention(out, *args, 0.25, window, softcap, np.zeros((4, S + T + width), np.float32))
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_decode_matches_prefill():
    """Attending to new keys or to the same keys already in the cache gives the same result."""
    T, H, D = 6, 2, 16
    q, _, _, _, kn, vn, qpos = attention_case(8, T=T, S=0, Hq=H, Hkv=H, D=D, Dv=D)
    full = np.empty((T, H, D), np.float32)
    _attention(full, q, kn[:0], vn[:0], qpos[:0], kn, vn, qpos, 0.3, 4, 0.0,
                np.zeros((2, T), np.float32))
    last = np.empty((1, H, D), np.float32)
    _attention(last, q[-1:], kn[:-1], vn[:-1], qpos[:-1], kn[-1:], vn[-1:], qpos[-1:], 0.3,
                4, 0.0, np.zeros((1, T), np.float32))
    np.testing.assert_allclose(last[0], full[-1], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- activations

def test_exp32_matches_float64_exp():
    """expf.exp32 (arithmetic only, so loops over it vectorize) vs float64 np.exp: <= 4e-7
    relative on its range (and every 512th float32 of [-1, 1]); 0 below -86.64 (where exp <
    2.4e-38), inf above ln(FLT_MAX), and -inf / inf / NaN / +-0 as exp."""
    from edgerope.kernels.expf import exp32_array
    small = np.arange(0, np.float32(1).view(np.int32) + 1, 512, dtype=np.int32).view(np.float32)
    dense = np.concatenate([np.linspace(-86.64, 88.72283, 2_000_001, dtype=np.float32),
                            small, -small])
    for x in (dense, dense[::-1].copy()):
        y = np.empty_like(x)
        exp32_array(y, x)
        ref = np.exp(x.astype(np.float64))
        assert np.max(np.abs(y - ref) / ref) <= 4e-7
    edge = np.float32([-np.inf, -1e30, -104.0, -87.0, -86.65, 88.7229, 89.0, 1e30, np.inf,
                       0.0, -0.0, np.nan])
    y = np.empty_like(edge)
    exp32_array(y, edge)
    assert list(y[:5]) == [0.0] * 5 and list(y[5:9]) == [np.inf] * 4
    assert y[9] == 1.0 and y[10] == 1.0 and np.isnan(y[11])


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"),
                    reason="checks x86 vector registers in the assembly")
def test_exp32_loop_is_vector_code(tmp_path):
    """The point of exp32: a loop over it compiles to packed (ymm / zmm) FMAs, no libm call.
    Compiled afresh in a subprocess (Numba cannot show the assembly of cached code)."""
    import subprocess
    import sys
    code = ("import re, numpy as np\n"
            "from edgerope.kernels.expf import exp32_array\n"
            "x = np.ones(8, np.float32)\n"
            "exp32_array(x, x)\n"
            "asm = ''.join(exp32_array.inspect_asm().values())\n"
            "print(bool(re.search(r'vfmadd\\w*ps\\s+%[yz]mm', asm)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True", "exp32's polynomial is not vectorized"


KINDS = [K.ACT_SILU, K.ACT_GELU, K.ACT_GELU_TANH, K.ACT_RELU2, K.ACT_RELU]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 31, 100, 1100])  # 1100: spans of 512, 512 and 76
def test_act_mul_and_act(kind, n):
    r = rng(n + kind)
    gu = randn(r, 3, 2 * n, scale=3.0)
    out = np.empty((3, n), np.float32)
    K.act_mul(out, gu, kind)
    np.testing.assert_allclose(out, naive.act_mul(gu, kind), rtol=1e-5, atol=1e-6)
    x = randn(r, 2, 3, n, scale=4.0)
    ref = naive.act(x, kind)
    K.act(x, x, kind)
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6)


def test_act_kinds_match_transformers():
    torch = pytest.importorskip("torch")
    acts = pytest.importorskip("transformers.activations")
    x = np.linspace(-6, 6, 241, dtype=np.float32)
    for name, kind in K.ACT_KINDS.items():
        ref = acts.ACT2FN[name](torch.from_numpy(x)).numpy()
        out = np.empty_like(x)
        K.act(out, x, kind)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6, err_msg=name)


def test_add_split_over_threads_and_aliased():
    """A prefill-sized add (past the parallel threshold) in chunks, out of place, in place
    (out is a: its own loop) and into b: the twin's numbers exactly."""
    r = rng(5)
    a, b = randn(r, 300, 640), randn(r, 300, 640)
    assert a.size >= 1 << 16
    ref = naive.add(a, b).astype(np.float32)
    out = np.empty_like(a)
    K.add(out, a, b)
    np.testing.assert_array_equal(out, ref)
    for into in ("a", "b"):
        x, y = a.copy(), b.copy()
        K.add(x if into == "a" else y, x, y)
        np.testing.assert_array_equal(x if into == "a" else y, ref)


def test_add_bias_scale_softcap():
    r = rng(1)
    a, b, bias = randn(r, 3, 33), randn(r, 3, 33), randn(r, 33)
    out = np.empty_like(a)
    K.add(out, a, b)
    np.testing.assert_array_equal(out, naive.add(a, b).astype(np.float32))
    ref = naive.add(a, b).astype(np.float32)
    K.add(a, a, b)  # in place
    np.testing.assert_array_equal(a, ref)
    x = randn(r, 4, 33)
    ref = naive.add_bias(x, bias).astype(np.float32)
    K.add_bias(x, bias)
    np.testing.assert_array_equal(x, ref)
    ref = naive.scale_(x, 0.125).astype(np.float32)
    K.scale_(x, 0.125)
    np.testing.assert_array_equal(x, ref)
    y = randn(r, 2, 5, 7, scale=40.0)
    ref = naive.softcap_(y, 30.0)
    K.softcap_(y, 30.0)
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-5)
    assert np.abs(y).max() <= 30.0


def test_softmax():
    r = rng(2)
    x = randn(r, 4, 257, scale=5.0)
    x[1, ::3] = -np.inf
    x[2, :] = -np.inf
    x[3, :] = 0.0
    ref = naive.softmax_(x)
    K.softmax_(x)
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-7)
    assert np.all(x[2] == 0) and np.all(x[1, ::3] == 0)
    np.testing.assert_allclose(x[[0, 1, 3]].sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 100_003])
def test_stream_sum(n):
    a = np.random.default_rng(n).integers(0, 2**63, n, dtype=np.uint64)
    assert int(K.stream_sum(a)) == naive.stream_sum(a)


# ------------------------------------------------------------------ prefill attention tiles

def _tiles(out, q, cache, new, params, units=3):
    D, Dv = q.shape[2], out.shape[2]
    stage = np.full((units, K.att_stage_len(D, Dv)), np.nan, np.float32)
    rows = np.full((2, q.shape[0] * q.shape[1]), np.nan, np.float32)
    offs = np.zeros((units, 3, K.ATT_MAX_ROWS), np.int64)
    assert K.tiles_usable(q.shape[0], q.shape[1], new[0].shape[1], Dv, q, out)
    K.attention_tiles(out, q, (_hm(cache[0]), _hm(cache[1])) + cache[2:], new, params, stage,
                      rows, offs)


@pytest.mark.parametrize("hq,hkv,d,dv", [(4, 1, 64, 64), (8, 2, 80, 80), (6, 1, 24, 32),
                                         (16, 16, 16, 16), (12, 2, 40, 48)])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (37, 0.0), (0, 20.0), (90, 30.0)])
@pytest.mark.parametrize("T,S,empty", [(70, 0, 0), (45, 150, 20), (129, 64, 64)])
def test_attention_tiles_equal_twin(hq, hkv, d, dv, window, softcap, T, S, empty):
    """Prefill in float tiles: GQA groups of 1 to 6, head dims that are not multiples of the
    tile (but Dv is of 16), windows, soft-capping, several key blocks of a cache with holes
    (or all empty), a chunk that is not a whole number of tiles, more work units than
    threads; and the same bits as with one unit and one thread."""
    args = attention_case(hq + d + T + window, T=T, S=S, Hq=hq, Hkv=hkv, D=d, Dv=dv,
                          empty=empty, p0=S + 20)
    q, kc, vc, cpos, kn, vn, qpos = args
    cache, new = (kc, vc, _NO_SCALES, _NO_SCALES, cpos), (kn, vn, qpos)
    out = np.full((T, hq, dv), np.nan, np.float32)
    _tiles(out, q, cache, new, (0.2, window, softcap))
    ref = naive.attention(*args, 0.2, window, softcap)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
    before = K.get_threads()
    K.set_threads(1)
    try:
        one = np.full_like(out, np.nan)
        _tiles(one, q, cache, new, (0.2, window, softcap), units=1)
    finally:
        K.set_threads(before)
    np.testing.assert_array_equal(one, out)


def test_attention_tiles_query_seeing_nothing_and_overflow():
    """A padding query (position -1) sees no key: zeros; a head whose logits all overflow to
    -inf gets zeros and leaves its group's other heads exact."""
    q, kc, vc, cpos, kn, vn, qpos = attention_case(11, T=40, S=10, Hq=4, Hkv=1, D=16, Dv=16)
    kc, kn = np.abs(kc), np.abs(kn)
    qpos[3] = -1
    q[:, 2, :] = -3e38
    out = np.full((40, 4, 16), np.nan, np.float32)
    _tiles(out, q, (kc, vc, _NO_SCALES, _NO_SCALES, cpos), (kn, vn, qpos), (0.25, 0, 0.0))
    assert (out[3] == 0).all() and (out[:, 2] == 0).all()
    ref = naive.attention(q, kc, vc, cpos, kn, vn, qpos, 0.25, 0, 0.0)
    keep = [t for t in range(40) if t != 3]
    np.testing.assert_allclose(out[keep][:, [0, 1, 3]], ref[keep][:, [0, 1, 3]], rtol=1e-5,
                               atol=1e-5)


def test_attention_tiles_refuse_short_scratch():
    """A staging row too short for the head dims raises instead of writing past it."""
    q, kc, vc, cpos, kn, vn, qpos = attention_case(3, T=40, S=0, Hq=4, Hkv=1, D=32, Dv=32)
    out = np.zeros((40, 4, 32), np.float32)
    with pytest.raises(ValueError, match="scratch too small"):
        K.attention_tiles(out, q, (_hm(kc), _hm(vc), _NO_SCALES, _NO_SCALES, cpos),
                          (kn, vn, qpos), (0.2, 0, 0.0),
                          np.zeros((2, K.att_stage_len(16, 16)), np.float32),
                          np.zeros((2, 160), np.float32), np.zeros((2, 3, 8), np.int64))


def test_attention_tiles_not_taken_for_few_rows():
    q = np.zeros((3, 4, 16), np.float32)
    assert not K.tiles_usable(3, 4, 1, 16, q, q)           # 12 query rows
    assert not K.tiles_usable(64, 4, 1, 24, q, q)          # Dv not a multiple of 16
    assert not K.tiles_usable(64, 4, 1, 16, q[:, ::2], q)  # strided q


# ------------------------------------------------------- several sequences in one call

@pytest.mark.parametrize("hq,hkv,d", [(4, 1, 64), (8, 2, 24), (4, 4, 16), (12, 2, 40)])
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (5, 0.0), (0, 20.0)])
@pytest.mark.parametrize("lens", [(1, 1, 1), (1, 3), (2, 1, 1, 4)])
def test_attention_rows_equal_the_twin_per_sequence(hq, hkv, d, window, softcap, lens):
    """attention_rows (a batch step): rows of several sequences, each against its own cache
    (stacked on a leading axis, with holes and different fill) and its own new rows only;
    equals the twin per sequence and `attention` of that sequence alone, bit for bit."""
    r = rng(hq + d + window + len(lens))
    N, S = len(lens), 24
    kc, vc = randn(r, N, S, hkv, d), randn(r, N, S, hkv, d)
    cpos = np.full((N, S), -1, np.int64)
    for i in range(N):
        n = 6 + 5 * i
        cpos[i, :n] = r.permutation(n)
    T = sum(lens)
    q, kn, vn = randn(r, T, hq, d), randn(r, T, hkv, d), randn(r, T, hkv, d)
    qpos = np.zeros(T, np.int64)
    seq, seg = np.zeros(T, np.int64), np.zeros((T, 2), np.int64)
    s = 0
    for i, n in enumerate(lens):
        p0 = int(cpos[i].max()) + 1
        qpos[s:s + n] = np.arange(p0, p0 + n)
        seq[s:s + n], seg[s:s + n] = i, (s, s + n)
        s += n
    scales = np.ones((N, 1, 1), np.float32)
    out = np.full((T, hq, d), np.nan, np.float32)
    scratch = np.zeros((16, S + T + hq * d), np.float32)
    K.attention_rows(out, q, (_hm(kc), _hm(vc), scales, scales, cpos), (kn, vn, qpos),
                     (0.2, window, softcap), scratch, seq, seg)
    s = 0
    for i, n in enumerate(lens):
        rows = slice(s, s + n)
        args = (q[rows], kc[i], vc[i], cpos[i], kn[rows], vn[rows], qpos[rows])
        ref = naive.attention(*args, 0.2, window, softcap)
        np.testing.assert_allclose(out[rows], ref, rtol=1e-5, atol=1e-5)
        alone = np.full((n, hq, d), np.nan, np.float32)
        _attention(alone, *args, 0.2, window, softcap, np.zeros((16, S + T + hq * d),
                                                                 np.float32))
        np.testing.assert_array_equal(out[rows], alone)
        s += n


@pytest.mark.parametrize("vocab,n", [(100, 100), (70, 64), (262144, 262140)])
def test_mask_bits_equals_unpacked_bits(vocab, n):
    """A grammar's token mask: x where bit i is set (and i < n), else -inf."""
    r = rng(vocab)
    bits = r.integers(-2**31, 2**31, (n + 31) // 32, dtype=np.int64).astype(np.int32)
    x = randn(r, vocab)
    out = np.full(vocab, np.nan, np.float32)
    K.mask_bits(out, x, bits, n)
    allowed = np.zeros(vocab, bool)
    allowed[:n] = np.unpackbits(bits.view(np.uint8), bitorder="little")[:n].astype(bool)
    np.testing.assert_array_equal(out, np.where(allowed, x, -np.inf).astype(np.float32))
