"""ggml's block types kept as GGUF files hold them (Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K):
packing is lossless, dequantization is gguf-py's bit for bit, the integer-dot products match
a float64 twin and are bit-identical on every SIMD path this CPU has, the Q8_K activation
quantizer is llama.cpp's."""
import numpy as np
import pytest

from edgerope.formats import MatrixSpec, Stack, ggml_blocks as gb
from edgerope.formats.linear import Activations, Linear
from edgerope.kernels import packed, simd
from edgerope.kernels.layout import GEOMETRY, act_buffers, gemm_scratch_len

import naive

FORMATS = list(gb.RAW)


def random_blocks(fmt, n, k, seed=0, scale=0.01):
    """Random raw blocks of type fmt (n rows, k columns): random codes and sub-block scales,
    finite fp16 scales of magnitude ~scale (mins too)."""
    rng = np.random.default_rng(seed)
    qk, nbytes = gb.RAW[fmt]
    raw = rng.integers(0, 256, (n, k // qk, nbytes), dtype=np.uint8)
    at = 0
    for _name, size, (kind, _off) in gb._FIELDS[fmt]:
        if kind == "wsp":
            v = (rng.standard_normal((n, k // qk)) * scale).astype(np.float16)
            raw[:, :, at:at + 2] = v.view(np.uint8).reshape(n, k // qk, 2)
        at += size
    return raw


def _gguf_dequant(fmt, raw):
    """gguf-py's dequantization where it is installed, else ours (which the first test holds
    to gguf-py's bit for bit wherever gguf-py is)."""
    try:
        import gguf
    except ImportError:
        return gb.dequantize(fmt, raw)
    return gguf.quants.dequantize(raw.reshape(raw.shape[0], -1),
                                  gguf.GGMLQuantizationType[fmt.upper()])


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [1, 16, 37])
def test_pack_round_trips_and_dequantizes_as_gguf_py(fmt, n):
    qk = gb.RAW[fmt][0]
    raw = random_blocks(fmt, n, 3 * qk, seed=n)
    wp, wsp = gb.pack(fmt, raw, n, 3 * qk)
    geo = GEOMETRY[fmt]
    assert wp.shape == (-(-n // 16), 3, geo.block_bytes) and wsp.shape[2] == geo.wsp_rows
    assert wp.ctypes.data % 64 == 0
    np.testing.assert_array_equal(gb.unpack(fmt, wp, wsp, n), raw)
    gguf = pytest.importorskip("gguf")
    ref = gguf.quants.dequantize(raw.reshape(n, -1), gguf.GGMLQuantizationType[fmt.upper()])
    np.testing.assert_array_equal(gb.dequantize(fmt, raw).view(np.uint32), ref.view(np.uint32))
    lin = Linear.from_ggml(fmt, raw, (n, 3 * qk))
    assert lin.dtype == fmt and lin.nbytes == wp.nbytes + wsp.nbytes
    np.testing.assert_array_equal(lin.dequantize().view(np.uint32), ref.view(np.uint32))


def test_sizes_are_the_files_own_or_close():
    """Bits a weight held in memory (a multiple of 16 rows): Q5_0 / Q6_K as in the file,
    Q4_K / Q5_K 4 bytes more per 256 weights (6-bit scales unpacked), Q4_1 / Q5_1 as the
    file but for nothing."""
    for fmt, bits in (("q4_1", 5.0), ("q5_0", 5.5), ("q5_1", 6.0), ("q4_k", 4.625),
                      ("q5_k", 5.625), ("q6_k", 6.5625)):
        lin = Linear.from_ggml(fmt, random_blocks(fmt, 32, 512), (32, 512))
        assert lin.nbytes * 8 / (32 * 512) == bits, fmt
        qk, nbytes = gb.RAW[fmt]
        assert bits <= nbytes * 8 / qk * 1.03


@pytest.mark.parametrize("t,k", [(1, 256), (3, 512), (5, 1024)])
def test_q8_k_activations_are_llama_cpp_reference(t, k):
    rng = np.random.default_rng(t)
    x = (rng.standard_normal((t, k)) * rng.uniform(0.01, 100, (t, 1))).astype(np.float32)
    x[0, :256] = 0  # an all-zero block
    x[-1, 7] = -x[-1, 200:].__abs__().max() * 2  # a negative extreme
    xq, xd, bs = act_buffers(t, k, "q8_k")
    packed.quantize_act_k(xq, xd, bs, x)
    want = naive.quantize_act_k(x)
    for got, ref in zip((xq, xd, bs), want):
        np.testing.assert_array_equal(got, ref)


def test_q8_k_activations_take_the_first_of_tied_extremes():
    """Two values of the largest magnitude and opposite signs: the first one's sign sets the
    scale's (llama.cpp's), in either order."""
    x = np.random.default_rng(5).standard_normal((2, 512)).astype(np.float32)
    x[0, 3], x[0, 100] = -9.0, 9.0
    x[1, 300], x[1, 400] = 9.0, -9.0
    xq, xd, bs = act_buffers(2, 512, "q8_k")
    packed.quantize_act_k(xq, xd, bs, x)
    assert xd[0, 0] > 0 and xd[1, 1] < 0
    for got, ref in zip((xq, xd, bs), naive.quantize_act_k(x)):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("t,n", [(1, 1), (1, 37), (3, 17), (13, 40), (21, 100)])
def test_products_match_twin_on_every_path(fmt, t, n):
    qk = gb.RAW[fmt][0]
    k = 2 * qk if qk == 256 else 5 * qk
    raw = random_blocks(fmt, n, k, seed=t * 100 + n)
    wp, wsp = gb.pack(fmt, raw, n, k)
    w = _gguf_dequant(fmt, raw)
    x = np.random.default_rng(n).standard_normal((t, k)).astype(np.float32)
    act = GEOMETRY[fmt].act
    xq, xs, xsum = act_buffers(t, k, act)
    (packed.quantize_act_k if act == "q8_k" else packed.quantize_act)(xq, xs, xsum, x)
    want = naive.ggml_gemm(xq, xs, 256 if act == "q8_k" else 32, w)
    results = []
    for mode in simd.available():
        gemv, gemm = packed.KERNELS[fmt][mode]
        out = np.full((t, n + 3), 7.0, np.float32)
        if t == 1:
            gemv(out[0], xq, xs, xsum, wp, wsp, n)
        else:
            gemm(out, xq, xs, xsum, wp, wsp, n)
        if t > 1 and mode == simd.MODE:  # the engine's call (a second compiled variant:
            # on the path it uses only) with its scratch: the same numbers, nothing past it
            need = gemm_scratch_len(fmt, t, k)
            scratch = np.full(need + 5, 3.0, np.float32)
            out2 = np.full((t, n + 3), 7.0, np.float32)
            gemm(out2, xq, xs, xsum, wp, wsp, n, scratch[:need] if need else None)
            np.testing.assert_array_equal(out2, out)
            assert (scratch[need:] == 3.0).all()
        assert (out[:, n:] == 7.0).all()  # nothing written past n_out
        np.testing.assert_allclose(out[:, :n], want, rtol=0, atol=2e-6 * np.abs(want).max())
        results.append(out)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("fmt", ["q5_0", "q4_1", "q4_k", "q6_k"])
def test_integer_sums_are_exact_at_the_extremes(fmt):
    """Largest codes and sub-block scales against +-127 activations: the integer dots do not
    overflow, and the scaled sums of a super-block (up to ~2.6e8 for Q6_K, past float32's
    2^24 integers) round no worse than once per sub-block."""
    qk, nbytes = gb.RAW[fmt]
    n, k = 16, 2 * qk if qk == 256 else 4 * qk
    raw = np.full((n, k // qk, nbytes), 0xFF, np.uint8)  # every code and scale at its max
    at = 0
    for _name, size, (kind, _off) in gb._FIELDS[fmt]:
        if kind == "wsp":
            raw[:, :, at:at + 2] = np.array([2.0 ** -10], np.float16).view(np.uint8)
        elif kind == "rows":  # Q6_K's signed scales: the largest is 127
            raw[:, :, at:at + size] = 127
        at += size
    w = _gguf_dequant(fmt, raw)
    wp, wsp = gb.pack(fmt, raw, n, k)
    act = GEOMETRY[fmt].act
    for sign in (1, -1):
        x = np.full((1, k), sign * 3.0, np.float32)
        xq, xs, xsum = act_buffers(1, k, act)
        (packed.quantize_act_k if act == "q8_k" else packed.quantize_act)(xq, xs, xsum, x)
        assert abs(int(xq[0, 0])) == 127
        want = naive.ggml_gemm(xq, xs, 256 if act == "q8_k" else 32, w)
        for mode in simd.available():
            out = np.zeros(n, np.float32)
            packed.KERNELS[fmt][mode][0](out, xq, xs, xsum, wp, wsp, n)
            np.testing.assert_allclose(out, want[0], rtol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
def test_embed_is_the_dequantized_rows(fmt):
    qk = gb.RAW[fmt][0]
    raw = random_blocks(fmt, 37, 2 * qk, seed=5)
    lin = Linear.from_ggml(fmt, raw, (37, 2 * qk))
    ids = np.array([0, 17, 36, 17], np.int64)
    out = np.zeros((4, 2 * qk), np.float32)
    lin.embed(out, ids, 0.5)
    np.testing.assert_array_equal(out, _gguf_dequant(fmt, raw)[ids] * np.float32(0.5))


def test_concat_keeps_formats():
    """q|k|v of one format stack into one matrix (whole row groups); mixed formats stay
    apart in a Stack that writes each part's columns, with one set of activation buffers."""
    q = Linear.from_ggml("q4_k", random_blocks("q4_k", 32, 512, 1), (32, 512))
    k = Linear.from_ggml("q4_k", random_blocks("q4_k", 16, 512, 2), (16, 512))
    v = Linear.from_ggml("q6_k", random_blocks("q6_k", 16, 512, 3), (16, 512),
                         bias=np.arange(16, dtype=np.float32))  # (Qwen2's q|k|v have biases)
    x = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    acts = Activations(4)

    def run(lin, t):
        out = np.zeros((t, lin.out_features), np.float32)
        lin(out, x[:t], acts)
        return out

    qk = Linear.concat([q, k])
    assert isinstance(qk, Linear) and qk.dtype == "q4_k" and qk.out_features == 48
    for t in (1, 3):
        np.testing.assert_array_equal(run(qk, t), np.concatenate([run(q, t), run(k, t)], 1))
    qkv = Linear.concat([q, k, v])
    assert isinstance(qkv, Stack) and qkv.dtype == "q4_k+q6_k"
    assert qkv.nbytes == q.nbytes + k.nbytes + v.nbytes and qkv.bias is not None
    # the run of one format stacks (one matmul for q|k), the other part stays apart
    assert [(p.dtype, p.out_features) for p in qkv.parts] == [("q4_k", 48), ("q6_k", 16)]
    assert all(isinstance(p, Linear) for p in qkv.parts)
    spec = MatrixSpec.concat([MatrixSpec(p.out_features, 512, p.dtype, p.bias is not None)
                              for p in (q, k, v)])
    assert [(p.dtype, p.out_features) for p in spec.parts] == [("q4_k", 48), ("q6_k", 16)]
    assert spec.nbytes == qkv.nbytes
    for t in (1, 3):
        np.testing.assert_array_equal(run(qkv, t), np.concatenate(
            [run(q, t), run(k, t), run(v, t)], 1))
    np.testing.assert_array_equal(qkv.dequantize(), np.concatenate(
        [q.dequantize(), k.dequantize(), v.dequantize()]))
    # a ggml part without whole row groups ends its run: what follows it stays apart
    odd = Linear.from_ggml("q4_k", random_blocks("q4_k", 17, 512, 4), (17, 512))
    three = Linear.concat([odd, k, v])
    assert [(p.dtype, p.out_features) for p in three.parts] == [
        ("q4_k", 17), ("q4_k", 16), ("q6_k", 16)]
    for t in (1, 3):
        np.testing.assert_array_equal(run(three, t), np.concatenate(
            [run(odd, t), run(k, t), run(v, t)], 1))


@pytest.mark.parametrize("fmt", ["q4_1", "q6_k"])
def test_a_non_finite_scale_is_refused(fmt):
    from edgerope.formats.q8 import ScaleRangeError
    raw = random_blocks(fmt, 3, gb.RAW[fmt][0])
    at = next(i for i, f in enumerate(gb._FIELDS[fmt]) if f[2][0] == "wsp")
    at = sum(f[1] for f in gb._FIELDS[fmt][:at])
    raw[1, 0, at:at + 2] = np.array([np.inf], np.float16).view(np.uint8)
    with pytest.raises(ScaleRangeError, match="NaN or infinite"):
        Linear.from_ggml(fmt, raw, (3, gb.RAW[fmt][0]))
