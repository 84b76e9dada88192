"""Packed int8 kernels (edgerope.kernels.q8dot) against their numpy twins in tests/naive.py.

Every code path the CPU can run is tested (portable everywhere, AVX-512 VNNI and 256-bit
VNNI where present); all must agree bit for bit, as must the GEMV and the GEMM row of the
same token.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import edgerope.kernels as K
from edgerope.kernels import q8dot, simd

import naive

PATHS = [(m, *q8dot.KERNELS[m]) for m in reversed(simd.available())]  # portable first


def rng(seed):
    return np.random.default_rng(seed)


def q8(r, n, k):
    """Random Q8 weights with the full int8 range (-128 occurs in GGUF files)."""
    wq = r.integers(-128, 128, size=(n, k), dtype=np.int8)
    ws = (r.random((n, K.q8_blocks(k))) * 0.02).astype(np.float32)
    return wq, ws


def activations(r, t, k):
    x = (r.standard_normal((t, k)) * r.random((t, 1)) * 4).astype(np.float32)
    xq, xs, xsum = K.act_buffers(t, k)
    K.quantize_act(xq, xs, xsum, x)
    return xq, xs, xsum


def run_all(xq, xs, xsum, wp, wsp, n):
    """{path: (gemm out, gemv outs of every row)} for every available path."""
    res = {}
    t = xq.shape[0]
    for name, gemv, gemm in PATHS:
        out = np.full((t, n), np.nan, np.float32)
        gemm(out, xq, xs, xsum, wp, wsp, n)
        rows = np.full((t, n), np.nan, np.float32)
        for i in range(t):
            gemv(rows[i], xq[i:i + 1], xs[i:i + 1], xsum[i:i + 1], wp, wsp, n)
        res[name] = (out, rows)
    return res


# ----------------------------------------------------------------------------- layout

@pytest.mark.parametrize("k", [1, 32, 40, 100, 640])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33])
def test_pack_matches_twin_and_round_trips(n, k):
    wq, ws = q8(rng(n * 7 + k), n, k)
    wp, wsp = K.pack_q8(wq, ws)
    g, nb = K.packed_shape(n, k)
    assert wp.shape == (g, nb, 512) and wp.dtype == np.uint8 and wp.ctypes.data % 64 == 0
    assert wsp.shape == (g, nb, 16) and wsp.dtype == np.float32
    tp, ts = naive.pack_q8(wq, ws)
    np.testing.assert_array_equal(wp, tp)
    np.testing.assert_array_equal(wsp, ts)
    uq, us = K.unpack_q8(wp, wsp, n, k)
    np.testing.assert_array_equal(uq, wq)
    np.testing.assert_array_equal(us, ws)


def test_embed_from_packed_rows():
    wq, ws = q8(rng(5), 37, 100)
    wp, wsp = K.pack_q8(wq, ws)
    ids = np.array([36, 0, 17, 16, 36], np.int64)
    out = np.empty((5, 100), np.float32)
    K.q8p_embed(out, ids, wp, wsp, 1.0)
    np.testing.assert_array_equal(out, naive.q8_embed(ids, wq, ws, 1.0))
    K.q8p_embed(out, ids, wp, wsp, 3.5)
    np.testing.assert_allclose(out, naive.q8_embed(ids, wq, ws, 3.5), rtol=1e-6)


# ----------------------------------------------------------------------------- activations

@pytest.mark.parametrize("k", [1, 31, 32, 40, 100, 640, 2048])
@pytest.mark.parametrize("t", [1, 3])
def test_quantize_act_matches_twin(t, k):
    r = rng(t * 10000 + k)
    x = (r.standard_normal((t, k)) * np.exp(r.standard_normal((t, 1)) * 3)).astype(np.float32)
    x[0, :min(k, 32)] = 0.0  # an all-zero block
    xq, xs, xsum = K.act_buffers(t, k)
    xq.fill(99)  # padding must be written, not assumed
    K.quantize_act(xq, xs, xsum, x)
    tq, ts, tsum = naive.quantize_act(x)
    np.testing.assert_array_equal(xq, tq)
    np.testing.assert_array_equal(xs, ts)
    np.testing.assert_array_equal(xsum, tsum)


def test_quantize_act_ties_round_away_from_zero():
    row = [127.0, 0.5, 1.5, -2.5, 2.5, -0.5, 0.49999997, -127.0] + [0.0] * 24
    x = np.array([row * 3 + [-254.0, 1.0]] * 2, np.float32)  # full blocks and a short one
    xq, xs, xsum = K.act_buffers(2, x.shape[1])
    K.quantize_act(xq, xs, xsum, x)
    assert np.all(xs == [1.0, 1.0, 1.0, 2.0])
    assert np.all(xq[:, :8] == [127, 1, 2, -3, 3, -1, 0, -127])
    assert np.all(xq[:, 96:] == [-127, 1] + [0] * 30)
    assert np.all(xsum == [2, 2, 2, -126])


# ----------------------------------------------------------------------------- products

@pytest.mark.parametrize("t,n,k", [(1, 1, 32), (2, 15, 40), (3, 17, 100), (5, 33, 640),
                                   (17, 16, 2048), (64, 40, 96), (9, 300, 64)])
def test_products_match_twin_on_every_path(t, n, k):
    r = rng(t * 1000 + n * 10 + k)
    wq, ws = q8(r, n, k)
    wp, wsp = K.pack_q8(wq, ws)
    xq, xs, xsum = activations(r, t, k)
    ref = naive.q8p_gemm(xq, xs, wq, ws)
    # float32 accumulation over nb blocks, one rounding per product and per fma
    nb = xs.shape[1]
    mag = np.abs(naive.q8p_block_dots(xq, wq)) * ws[None] * xs[:, None, :]
    tol = (nb + 2) * 2.0 ** -24 * mag.sum(axis=2) + 1e-30
    res = run_all(xq, xs, xsum, wp, wsp, n)
    first = res["portable"][0]
    for name, (out, rows) in res.items():
        err = np.abs(out - ref)
        assert np.all(err <= tol), f"{name}: max excess {np.max(err - tol):.3g}"
        np.testing.assert_array_equal(rows, out, err_msg=f"{name}: gemv row != gemm row")
        np.testing.assert_array_equal(out, first, err_msg=f"{name} != portable")
    out = np.empty((t, n), np.float32)
    K.q8p_gemm(out, xq, xs, xsum, wp, wsp, n)  # the dispatched names
    np.testing.assert_array_equal(out, first)
    K.q8p_gemv(out[0], xq, xs, xsum, wp, wsp, n)
    np.testing.assert_array_equal(out[0], first[0])


@pytest.mark.parametrize("case", ["random", "extremes"])
def test_integer_dots_are_exact(case):
    """Unit scales: every output is a sum of exact block dots, exactly representable."""
    t, n, k = 11, 20, 640
    r = rng(42)
    if case == "random":
        wq = r.integers(-128, 128, size=(n, k), dtype=np.int8)
        xq = r.integers(-127, 128, size=(t, k), dtype=np.int8)
    else:  # largest magnitudes: 20 blocks * 32 * 128 * 127 < 2^24
        wq = np.where(r.random((n, k)) < 0.5, -128, 127).astype(np.int8)
        wq[:10] = -128
        xq = np.where(r.random((t, k)) < 0.5, -127, 127).astype(np.int8)
        xq[:5] = -127
        xq[5] = 127
    ws = np.ones((n, k // 32), np.float32)
    xs = np.ones((t, k // 32), np.float32)
    xsum = xq.astype(np.int32).reshape(t, -1, 32).sum(axis=2, dtype=np.int32)
    wp, wsp = K.pack_q8(wq, ws)
    exact = naive.q8p_block_dots(xq, wq).sum(axis=2)
    assert np.abs(exact).max() < 2 ** 24
    for name, (out, rows) in run_all(xq, xs, xsum, wp, wsp, n).items():
        np.testing.assert_array_equal(out.astype(np.int64), exact, err_msg=name)
        np.testing.assert_array_equal(rows.astype(np.int64), exact, err_msg=name)


def test_strided_views_and_large_tiles():
    """Rows taken from bigger preallocated buffers (the run-state pattern), T not a tile
    multiple, an output wider than n_out left untouched past n_out."""
    t, n, k = 23, 50, 160
    r = rng(9)
    wq, ws = q8(r, n, k)
    wp, wsp = K.pack_q8(wq, ws)
    x = r.standard_normal((t, k)).astype(np.float32)
    bq, bs, bsum = K.act_buffers(64, k)
    K.quantize_act(bq[:t], bs[:t], bsum[:t], x)
    ref = naive.q8p_gemm(*naive.quantize_act(x)[:2], wq, ws)
    for name, gemv, gemm in PATHS:
        big = np.full((t, n + 7), -1.0, np.float32)
        gemm(big[:, :n], bq[:t], bs[:t], bsum[:t], wp, wsp, n)
        assert np.all(big[:, n:] == -1.0), name
        np.testing.assert_allclose(big[:, :n], ref, rtol=1e-5, atol=1e-6, err_msg=name)


def test_thread_count_does_not_change_results():
    if K.max_threads() < 2:
        pytest.skip("needs 2 threads")
    r = rng(11)
    wq, ws = q8(r, 200, 640)
    wp, wsp = K.pack_q8(wq, ws)
    xq, xs, xsum = activations(r, 17, 640)
    before = K.get_threads()
    try:
        outs = []
        for th in (1, 2):
            K.set_threads(th)
            outs.append(run_all(xq, xs, xsum, wp, wsp, 200))
    finally:
        K.set_threads(before)
    for name in outs[0]:
        np.testing.assert_array_equal(outs[0][name][0], outs[1][name][0])
        np.testing.assert_array_equal(outs[0][name][1], outs[1][name][1])


def test_bad_arguments_raise_instead_of_reading_wild_memory():
    wp, wsp = K.pack_q8(np.ones((20, 64), np.int8), np.ones((20, 2), np.float32))
    xq, xs, xsum = K.act_buffers(2, 64)
    out = np.empty(20, np.float32)
    with pytest.raises(ValueError, match="row per token"):
        K.q8p_gemv(out, xq[:0], xs, xsum, wp, wsp, 20)
    with pytest.raises(ValueError, match="n_out"):
        K.q8p_gemv(out, xq, xs, xsum, wp, wsp, 33)
    _, wsp1 = K.pack_q8(np.ones((20, 32), np.int8), np.ones((20, 1), np.float32))
    with pytest.raises(ValueError, match="packed"):
        K.q8p_gemm(out[None], xq[:1], xs[:1], xsum[:1], wp, wsp1, 20)
    with pytest.raises(ValueError, match="xq"):
        K.q8p_gemm(np.empty((2, 20), np.float32), K.act_buffers(2, 32)[0], xs, xsum, wp, wsp,
                   20)
    with pytest.raises(Exception, match="xsum"):  # numba's TypingError
        K.q8p_gemv(out, xq, xs, xsum.astype(np.int64), wp, wsp, 20)


# ----------------------------------------------------------------------------- selection, cache

def _python(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_simd_env_override():
    env = dict(os.environ, EDGEROPE_SIMD="portable")
    p = _python("from edgerope.kernels import q8dot, simd\n"
                "print(simd.MODE, q8dot.q8p_gemv is q8dot.q8p_gemv_portable)", env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["portable", "True"]
    p = _python("import edgerope.kernels", dict(os.environ, EDGEROPE_SIMD="sse9"))
    assert p.returncode != 0 and "EDGEROPE_SIMD" in p.stderr


def test_compiled_kernels_are_reused_from_the_cache(tmp_path):
    """Intrinsics and cache=True: a second process loads the machine code, compiles nothing."""
    code = """
        import numpy as np
        from edgerope.kernels import q8dot as Q
        wp = np.full((2, 2, 512), 129, np.uint8)  # every weight 1
        wsp = np.ones((2, 2, 16), np.float32)
        xq, xs = np.ones((1, 64), np.int8), np.ones((1, 2), np.float32)
        xsum = np.full((1, 2), 32, np.int32)
        out = np.empty(20, np.float32)
        Q.q8p_gemv(out, xq, xs, xsum, wp, wsp, 20)
        assert np.all(out == 64.0), out
        st = Q.q8p_gemv.stats
        print(sum(st.cache_hits.values()), sum(st.cache_misses.values()))
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [_python(code, env) for _ in range(2)]
    for p in runs:
        assert p.returncode == 0, p.stderr
    assert runs[0].stdout.split() == ["0", "1"]  # compiled and saved
    assert runs[1].stdout.split() == ["1", "0"]  # loaded, nothing compiled
