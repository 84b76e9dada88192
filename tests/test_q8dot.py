"""Packed int8 kernels (edgerope.kernels.packed, layout edgerope.formats.q8) against their numpy twins in tests/naive.py.

Every code path the CPU can run is tested (portable everywhere, AVX-512 VNNI and 256-bit
VNNI where present); all must agree bit for bit, as must the GEMV and the GEMM row of the
same token. Weight scales are packed as fp16: the twins get them rounded (naive.f16).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import edgerope.kernels as K
from edgerope.formats import q8 as q8fmt
from edgerope.kernels import packed, simd

import naive

PATHS = [(m, *packed.KERNELS["q8"][m]) for m in reversed(simd.available())]  # portable first


def rng(seed):
    return np.random.default_rng(seed)


def q8(r, n, k):
    """Random Q8 weights with the full int8 range (-128 occurs in GGUF files)."""
    wq = r.integers(-128, 128, size=(n, k), dtype=np.int8)
    ws = (r.random((n, K.q8_blocks(k))) * 0.02).astype(np.float32)  # not fp16 values
    return wq, ws


def activations(r, t, k):
    x = (r.standard_normal((t, k)) * r.random((t, 1)) * 4).astype(np.float32)
    xq, xs, xsum = K.act_buffers(t, k)
    K.quantize_act(xq, xs, xsum, x)
    return xq, xs, xsum


def run_all(xq, xs, xsum, wp, wsp, n, paths=PATHS):
    """{path: (gemm out, gemv outs of every row)} for every available path."""
    res = {}
    t = xq.shape[0]
    for name, gemv, gemm in paths:
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
    wp, wsp = q8fmt.pack_q8(wq, ws)
    g, nb = q8fmt.packed_shape(n, k)
    assert wp.shape == (g, nb, 512) and wp.dtype == np.uint8 and wp.ctypes.data % 64 == 0
    assert wsp.shape == (g, nb, 16) and wsp.dtype == np.uint16 and wsp.strides == (
        nb * 32, 32, 2)
    tp, ts = naive.pack_q8(wq, ws)
    np.testing.assert_array_equal(wp, tp)
    np.testing.assert_array_equal(wsp, ts)
    uq, us = q8fmt.unpack_q8(wp, wsp, n, k)
    np.testing.assert_array_equal(uq, wq)
    assert us.dtype == np.float32
    np.testing.assert_array_equal(us, naive.f16(ws))
    wp2, wsp2 = q8fmt.pack_q8(uq, us)  # fp16 scales pass through float32 unchanged
    np.testing.assert_array_equal(wp2, wp)
    np.testing.assert_array_equal(wsp2, wsp)


def _packed_scale_bits(ws):
    """fp16 bit patterns pack_q8 stores for float32 scales ws (N, nb), in (N, nb) order."""
    n, nb = ws.shape
    wp, wsp = q8fmt.pack_q8(np.zeros((n, 32 * nb), np.int8), ws)
    return q8fmt.unpack_q8(wp, wsp, n, 32 * nb)[1].astype(np.float16).view(np.uint16)


def test_scale_rounding_is_numpy_float16_and_llama_cpp():
    """Round to nearest even as np.float16 and llama.cpp's GGML_FP32_TO_FP16 (both): random
    magnitudes, exact ties between fp16 neighbours (normal and subnormal) and their float32
    neighbours, values that round to zero, values just below the fp16 overflow."""
    r = rng(3)
    mag = np.exp2(r.uniform(-30, 15.99, 20000)).astype(np.float32)
    lo = np.arange(0, 0x7BFF, 37, dtype=np.uint16)  # fp16 neighbours lo, lo + 1
    mid = (lo.view(np.float16).astype(np.float64) + (lo + 1).view(np.float16)) / 2
    ties = mid.astype(np.float32)
    assert np.all(ties == mid)  # exactly halfway (float32 holds it)
    edge = np.float32([0.0, 2.0 ** -25, 2.0 ** -25 * 1.0001, 2.0 ** -26, 2.0 ** -24, 1e-9,
                       65504.0, 65519.99, 6e-5, 6.1e-5])
    ws = np.concatenate([mag, ties, np.nextafter(ties, np.float32(0)),
                         np.nextafter(ties, np.float32(1e9)), edge, -edge])
    bits = _packed_scale_bits(ws.reshape(-1, 2)).ravel()
    np.testing.assert_array_equal(bits, ws.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(bits, naive.fp32_to_fp16(ws))
    t = bits[len(mag):len(mag) + len(lo)]
    np.testing.assert_array_equal(t, lo + (lo & 1))  # ties to the even neighbour
    assert np.all(bits[-2 * len(edge):] == [0, 0, 1, 0, 1, 0, 0x7BFF, 0x7BFF, 0x3EF, 0x3FF]
                  + [0x8000, 0x8000, 0x8001, 0x8000, 0x8001, 0x8000, 0xFBFF, 0xFBFF, 0x83EF,
                     0x83FF])


def test_quantize_then_pack_is_llama_cpp_q8_0():
    """quantize_q8 (q from the float32 d) then pack (d to fp16): llama.cpp's Q8_0 blocks."""
    r = rng(8)
    w = (r.standard_normal((40, 256)) * np.exp2(r.integers(-28, 20, (40, 1)))).astype(
        np.float32)
    w[3, 32:64] = 0.0  # a zero block
    w[5, :32] = np.float32(2.0 ** -20)  # d = 2^-20 / 127: an fp16 subnormal
    wq = np.empty(w.shape, np.int8)
    ws = np.empty((40, 8), np.float32)
    K.quantize_q8(wq, ws, w)
    uq, us = q8fmt.unpack_q8(*q8fmt.pack_q8(wq, ws), 40, 256)
    blocks = np.empty((40, 8, 34), np.uint8)
    blocks[:, :, :2] = us.astype(np.float16).view(np.uint8).reshape(40, 8, 2)
    blocks[:, :, 2:] = uq.view(np.uint8).reshape(40, 8, 32)
    np.testing.assert_array_equal(blocks, naive.q8_0_blocks(w))


@pytest.mark.parametrize("bad", [65520.0, 1e30, np.inf, -np.inf, np.nan, -70000.0])
def test_scale_outside_fp16_raises(bad):
    ws = np.full((3, 2), 0.01, np.float32)
    ws[2, 1] = bad
    with pytest.raises(q8fmt.ScaleRangeError, match=r"float16 \(row 2, block 1"):
        q8fmt.pack_q8(np.ones((3, 64), np.int8), ws)
    assert issubclass(q8fmt.ScaleRangeError, ValueError)
    w = np.ones((1, 32), np.float32)
    w[0, 0] = 127 * 65520  # a weight whose scale does not fit
    wq, ws = np.empty((1, 32), np.int8), np.empty((1, 1), np.float32)
    K.quantize_q8(wq, ws, w)
    with pytest.raises(q8fmt.ScaleRangeError):
        q8fmt.pack_q8(wq, ws)
    w[0, 0] = 127 * 65519  # rounds down to 65504: fine
    K.quantize_q8(wq, ws, w)
    assert q8fmt.unpack_q8(*q8fmt.pack_q8(wq, ws), 1, 32)[1][0, 0] == 65504.0


@pytest.mark.parametrize("hardware", [False, True])
def test_ir_scale_widening_every_finite_pattern(hardware):
    """simd._half_to_float, both ways (fpext where the CPU converts half, integer ops
    elsewhere), compiled on its own: bit for bit numpy's float16 -> float32."""
    if hardware and not simd.HAS_F16_CONVERT:
        pytest.skip("no hardware half conversion on this CPU")
    import ctypes

    import llvmlite.binding as llb
    from llvmlite import ir
    from numba.core import cgutils

    mod = ir.Module("h2f")
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [simd.I8P, simd.I8P, simd.I64]), "h2f")
    builder = ir.IRBuilder(fn.append_basic_block())
    src, dst, n = fn.args
    with cgutils.for_range(builder, n) as loop:
        h = simd._load(builder, src, builder.mul(loop.index, simd.I64(32)), simd.V16H, align=2)
        f = simd._half_to_float(builder, h, hardware=hardware)
        ptr = builder.gep(dst, [builder.mul(loop.index, simd.I64(64))])
        builder.store(f, builder.bitcast(ptr, simd.V16F.as_pointer()), align=4)
    builder.ret_void()
    tm = llb.Target.from_default_triple().create_target_machine(
        cpu=llb.get_host_cpu_name(), features=llb.get_host_cpu_features().flatten(), opt=2)
    llmod = llb.parse_assembly(str(mod))
    asm = tm.emit_assembly(llmod)
    assert "call" not in asm  # no library routine (the JIT could not resolve one)
    if hardware and "x86" in llb.get_process_triple():
        assert "vcvtph2ps" in asm
    engine = llb.create_mcjit_compiler(llmod, tm)
    engine.finalize_object()
    cfunc = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        engine.get_function_address("h2f"))
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    h = h[np.isfinite(h.view(np.float16))]
    h = np.concatenate([h, np.zeros(-len(h) % 16, np.uint16)])
    out = np.empty(len(h), np.float32)
    cfunc(h.ctypes.data, out.ctypes.data, len(h) // 16)
    np.testing.assert_array_equal(out.view(np.uint32),
                                  h.view(np.float16).astype(np.float32).view(np.uint32))


def test_embed_from_packed_rows():
    wq, ws = q8(rng(5), 37, 100)
    wp, wsp = q8fmt.pack_q8(wq, ws)
    ids = np.array([36, 0, 17, 16, 36], np.int64)
    out = np.empty((5, 100), np.float32)
    K.q8p_embed(out, ids, wp, wsp, 1.0)
    np.testing.assert_array_equal(out, naive.q8_embed(ids, wq, naive.f16(ws), 1.0))
    K.q8p_embed(out, ids, wp, wsp, 3.5)
    np.testing.assert_allclose(out, naive.q8_embed(ids, wq, naive.f16(ws), 3.5), rtol=1e-6)


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
    wp, wsp = q8fmt.pack_q8(wq, ws)
    ws = naive.f16(ws)  # what the kernels multiply by
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


def test_fp16_scale_extremes_on_every_path():
    """Subnormal, zero, negative and the largest fp16 scales: every path widens them to the
    same float32 values (bit for bit with each other, the twin up to the accumulation)."""
    t, n, k = 9, 40, 320
    r = rng(21)
    wq = r.integers(-128, 128, size=(n, k), dtype=np.int8)
    ws = np.exp2(r.uniform(-26, 16, (n, k // 32))).astype(np.float32)
    ws[r.random(ws.shape) < 0.1] *= -1
    ws[r.random(ws.shape) < 0.05] = 0.0
    ws[0] = 65504.0
    ws[1] = np.exp2(-24.0)
    wp, wsp = q8fmt.pack_q8(wq, ws)
    h = wsp.view(np.float16)
    assert np.any((h != 0) & (np.abs(h) < 2 ** -14)) and np.any(h < 0)  # subnormal, negative
    xq, xs, xsum = activations(r, t, k)
    ref = naive.q8p_gemm(xq, xs, wq, naive.f16(ws))
    mag = np.abs(naive.q8p_block_dots(xq, wq)) * np.abs(naive.f16(ws))[None] * xs[:, None, :]
    tol = (k // 32 + 2) * 2.0 ** -24 * mag.sum(axis=2) + 1e-37
    res = run_all(xq, xs, xsum, wp, wsp, n)
    for name, (out, rows) in res.items():
        assert np.all(np.abs(out - ref) <= tol), name
        np.testing.assert_array_equal(rows, out, err_msg=name)
        np.testing.assert_array_equal(out, res["portable"][0], err_msg=name)


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
    wp, wsp = q8fmt.pack_q8(wq, ws)
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
    wp, wsp = q8fmt.pack_q8(wq, ws)
    x = r.standard_normal((t, k)).astype(np.float32)
    bq, bs, bsum = K.act_buffers(64, k)
    K.quantize_act(bq[:t], bs[:t], bsum[:t], x)
    ref = naive.q8p_gemm(*naive.quantize_act(x)[:2], wq, naive.f16(ws))
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
    wp, wsp = q8fmt.pack_q8(wq, ws)
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
    wp, wsp = q8fmt.pack_q8(np.ones((20, 64), np.int8), np.ones((20, 2), np.float32))
    xq, xs, xsum = K.act_buffers(2, 64)
    out = np.empty(20, np.float32)
    with pytest.raises(ValueError, match="row per token"):
        K.q8p_gemv(out, xq[:0], xs, xsum, wp, wsp, 20)
    with pytest.raises(ValueError, match="n_out"):
        K.q8p_gemv(out, xq, xs, xsum, wp, wsp, 33)
    _, wsp1 = q8fmt.pack_q8(np.ones((20, 32), np.int8), np.ones((20, 1), np.float32))
    with pytest.raises(ValueError, match="packed"):
        K.q8p_gemm(out[None], xq[:1], xs[:1], xsum[:1], wp, wsp1, 20)
    with pytest.raises(ValueError, match="xq"):
        K.q8p_gemm(np.empty((2, 20), np.float32), K.act_buffers(2, 32)[0], xs, xsum, wp, wsp,
                   20)
    with pytest.raises(Exception, match="xsum"):  # numba's TypingError
        K.q8p_gemv(out, xq, xs, xsum.astype(np.int64), wp, wsp, 20)
    with pytest.raises(Exception, match="wsp"):  # float32 scales (format version 2)
        K.q8p_gemv(out, xq, xs, xsum, wp, q8fmt.unpack_q8(wp, wsp, 20, 64)[1], 20)


# ----------------------------------------------------------------------------- selection

def _python(code, env):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_simd_env_override():
    env = dict(os.environ, EDGEROPE_SIMD="portable")
    p = _python("from edgerope.kernels import packed, simd\n"
                "print(simd.MODE, packed.q8p_gemv is packed.KERNELS['q8']['portable'][0],\n"
                "      packed.q4p_gemm is packed.KERNELS['q4']['portable'][1])", env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["portable", "True", "True"]
    # importing never raises on a bad environment; the first kernel use says what is wrong
    bad = dict(os.environ, EDGEROPE_SIMD="sse9")
    assert _python("import edgerope, edgerope.kernels", bad).returncode == 0
    p = _python("import edgerope.kernels as K\nK.q8p_gemv", bad)
    assert p.returncode != 0 and "ConfigError: EDGEROPE_SIMD='sse9'" in p.stderr


def test_code_generator_probe_works_before_numba_compiles_anything():
    """simd asks LLVM what it can emit (AArch64: sdot) when it is first imported, which the
    lazily loaded kernels may make the first LLVM use in the process: the probe must set
    LLVM's target up itself (without it, a Pi 5 silently lost its sdot path)."""
    p = _python("from edgerope.kernels import simd\n"
                "print(simd._emits('define i32 @f(i32 %a) {\\n  ret i32 %a\\n}\\n', 'ret'))",
                dict(os.environ))
    assert p.returncode == 0 and p.stdout.split() == ["True"], p.stderr
