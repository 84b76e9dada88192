"""Int4 (Q4_0) kernels (edgerope.kernels.packed, layout edgerope.formats.q4) against their numpy twins in tests/naive.py.

As for int8: every path the CPU can run (portable everywhere, AVX-512 VNNI and 256-bit VNNI
where present) must agree bit for bit, GEMV rows must equal GEMM rows, and the results must
match the exact-integer twin up to float32 accumulation.
"""
import numpy as np
import pytest

import edgerope.kernels as K
from edgerope.formats import q4, q8
from edgerope.kernels import packed, simd

import naive
import test_q8dot
from test_q8dot import activations

PATHS = [(m, *packed.KERNELS["q4"][m]) for m in reversed(simd.available())]  # portable first


def rng(seed):
    return np.random.default_rng(seed)


def weights(r, n, k):
    """Float weights with features the quantizer must get right: ties of magnitude with both
    signs, all-zero blocks, a negative extreme."""
    w = (r.standard_normal((n, k)) * 0.05).astype(np.float32)
    if n > 2 and k >= 32:
        w[0, :32] = 0.0                       # zero block: d = 0, codes 8
        w[1, 3], w[1, 7] = -0.5, 0.5          # tie: the first (negative) wins
        w[2, 5] = -1.0
    return w


def random_q4(r, n, k):
    nb = -(-k // 32)
    codes = r.integers(0, 16, size=(n, nb, 32), dtype=np.uint8)
    ws = (r.random((n, nb)) * 0.02).astype(np.float32)
    return codes, ws


# ----------------------------------------------------------------------------- format

@pytest.mark.parametrize("n,k", [(1, 32), (3, 64), (5, 40), (7, 100), (16, 96)])
def test_quantize_is_ggml_reference(n, k):
    w = weights(rng(n * 100 + k), n, k)
    codes, d = naive.quantize_q4_0(w)
    qs, ds = q4.quantize_q4(w)
    np.testing.assert_array_equal(ds, d)
    np.testing.assert_array_equal(qs, naive.q4_0_bytes(codes))
    if n > 2:
        assert ds[0, 0] == 0 and np.all(codes[0, 0] == 8)
        assert ds[1, 0] == np.float32(0.0625)      # -0.5 / -8: the first of the tie
        assert codes[1, 0, 3] == 0 and codes[1, 0, 7] == 15


def test_quantize_round_trip_error_is_bounded():
    """|w - dequant| <= d / 2 except the clamped top code (<= d): 4-bit rounding, no more."""
    w = weights(rng(3), 64, 256)
    qs, d = q4.quantize_q4(w)
    back = q4.dequantize_q4(qs, d, 256)
    dd = np.repeat(np.abs(d), 32, axis=1)
    assert np.all(np.abs(back - w) <= dd * 1.0000001)
    assert np.mean(np.abs(back - w) <= dd * 0.5000001) > 0.95


@pytest.mark.parametrize("k", [32, 40, 640])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 33])
def test_pack_matches_twin_and_round_trips(n, k):
    codes, ws = random_q4(rng(n * 7 + k), n, k)
    qs = naive.q4_0_bytes(codes)
    wp, wsp = q4.pack_q4(qs, ws)
    g, nb = q4.packed_shape(n, k)
    assert wp.shape == (g, nb, 256) and wp.dtype == np.uint8 and wp.ctypes.data % 64 == 0
    assert wsp.shape == (g, nb, 16) and wsp.strides == (nb * 32, 32, 2)
    tp, ts = naive.pack_q4(codes, ws)
    np.testing.assert_array_equal(wp, tp)
    np.testing.assert_array_equal(wsp, ts)
    uq, us = q4.unpack_q4(wp, wsp, n)
    np.testing.assert_array_equal(uq, qs)
    np.testing.assert_array_equal(us, naive.f16(ws))


def test_gguf_q4_0_blocks_decode_the_same():
    """Our Q4_0 bytes are llama.cpp's: gguf-py's dequantizer reads them to our values."""
    from gguf import GGMLQuantizationType, quants
    w = weights(rng(11), 8, 128)
    qs, d = q4.quantize_q4(w)
    blocks = np.concatenate([naive.fp32_to_fp16(d).view(np.uint8).reshape(8, 4, 2), qs],
                            axis=2)
    ref = quants.dequantize(blocks.reshape(8, -1), GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(ref, q4.dequantize_q4(qs, naive.f16(d), 128))
    # and gguf-py's own quantizer (a port of ggml's reference) produces the same bytes
    np.testing.assert_array_equal(quants.quantize(w, GGMLQuantizationType.Q4_0),
                                  blocks.reshape(8, -1))


def test_embed_from_packed_rows():
    n, k = 37, 96
    codes, ws = random_q4(rng(5), n, k)
    wp, wsp = q4.pack_q4(naive.q4_0_bytes(codes), ws)
    ids = np.array([0, 36, 17, 16, 5], np.int64)
    out = np.empty((len(ids), k), np.float32)
    K.q4p_embed(out, ids, wp, wsp, 0.5)
    w = naive.q4_weights(codes, k).astype(np.float32) * np.repeat(naive.f16(ws), 32, 1)
    np.testing.assert_array_equal(out, w[ids] * np.float32(0.5))


# ----------------------------------------------------------------------------- products

def run_all(xq, xs, xsum, wp, wsp, n):
    return test_q8dot.run_all(xq, xs, xsum, wp, wsp, n, PATHS)


@pytest.mark.parametrize("t,n,k", [(1, 1, 32), (2, 15, 40), (3, 17, 100), (5, 33, 640),
                                   (17, 16, 2048), (64, 40, 96), (9, 300, 64)])
def test_products_match_twin_on_every_path(t, n, k):
    r = rng(t * 1000 + n * 10 + k)
    codes, ws = random_q4(r, n, k)
    wp, wsp = q4.pack_q4(naive.q4_0_bytes(codes), ws)
    wq, ws = naive.q4_weights(codes, k), naive.f16(ws)
    xq, xs, xsum = activations(r, t, k)
    ref = naive.q8p_gemm(xq, xs, wq, ws)
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
    K.q4p_gemm(out, xq, xs, xsum, wp, wsp, n)  # the dispatched names
    np.testing.assert_array_equal(out, first)


@pytest.mark.parametrize("code,xv", [(0, 127), (0, -127), (15, 127), (15, -127)])
def test_integer_dots_are_exact_at_the_extremes(code, xv):
    """Codes 0 / 15 (weights -8 / 7) against activations +-127 in every column: the largest
    block dots, exact on every path (unit scales make the result the integer itself)."""
    n, k, t = 16, 256, 3
    codes = np.full((n, k // 32, 32), code, np.uint8)
    wp, wsp = q4.pack_q4(naive.q4_0_bytes(codes), np.ones((n, k // 32), np.float32))
    xq = np.full((t, k), xv, np.int8)
    xs = np.ones((t, k // 32), np.float32)
    xsum = np.full((t, k // 32), 32 * xv, np.int32)
    want = np.float32((code - 8) * xv * k)
    for name, (out, rows) in run_all(xq, xs, xsum, wp, wsp, n).items():
        assert np.all(out == want) and np.all(rows == want), name


def test_thread_count_does_not_change_results():
    r = rng(9)
    codes, ws = random_q4(r, 300, 640)
    wp, wsp = q4.pack_q4(naive.q4_0_bytes(codes), ws)
    xq, xs, xsum = activations(r, 20, 640)
    outs = []
    before = K.get_threads()
    try:
        for threads in (1, K.max_threads()):
            K.set_threads(threads)
            out = np.empty((20, 300), np.float32)
            K.q4p_gemm(out, xq, xs, xsum, wp, wsp, 300)
            outs.append(out)
    finally:
        K.set_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_int8_blocks_are_refused():
    """An int8-packed matrix passed to an int4 kernel (or the reverse) is an error, not a
    read of the wrong bytes."""
    wq = np.ones((16, 64), np.int8)
    wp8, wsp8 = q8.pack_q8(wq, np.ones((16, 2), np.float32))
    codes = np.full((16, 2, 32), 9, np.uint8)
    wp4, wsp4 = q4.pack_q4(naive.q4_0_bytes(codes), np.ones((16, 2), np.float32))
    xq, xs, xsum = activations(rng(1), 1, 64)
    out = np.empty((1, 16), np.float32)
    for _, gemv, gemm in PATHS:
        with pytest.raises(ValueError):
            gemv(out[0], xq, xs, xsum, wp8, wsp8, 16)
        with pytest.raises(ValueError):
            gemm(out, xq, xs, xsum, wp8, wsp8, 16)
    with pytest.raises(ValueError):
        K.q8p_gemv(out[0], xq, xs, xsum, wp4, wsp4, 16)
