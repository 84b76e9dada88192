"""CPU SIMD support: which instruction set the int8 kernels may use, and their LLVM-IR cores.

`MODE` is the best of `available()`: "vnni" (AVX-512 VNNI, 512-bit vpdpbusd), "avxvnni"
(256-bit vpdpbusd: AVX-VNNI, or AVX-512 VNNI with VL), "sdot" (AArch64 dot product) or
"portable" (any CPU Numba targets); the environment variable
EDGEROPE_SIMD=vnni|avxvnni|sdot|portable overrides it (asking for an
instruction set the CPU lacks raises at import). Python code picks kernels from `MODE`, so an
x86 intrinsic is only ever compiled into code for a CPU that has it.

Numba intrinsics written in LLVM IR (LLVM does not emit vpdpbusd from plain loops, and a
32-lane block body written in Numba gets fully unrolled and left scalar):

- `core(fmt, mode)`: the whole inner loop of a packed-weight matmul (layouts in
  edgerope.formats.q8 / q4; a `_Fmt` here says how the cores read one: `Q8`, `Q4`), on one
  path: "vnni" keeps integer accumulators in zmm registers across the eight vpdpbusd of a
  32-column block, float accumulators across all blocks of a row group, and each 64-byte
  weight load serves a tile of GEMM_TILE tokens (GEMM of Q8_0, Q4_0, Q4_1: two row groups
  at a time, each activation broadcast serving both); "avxvnni" does each 512-bit step as two
  256-bit vpdpbusd; "portable" runs the same loop in generic vector IR (any target): float32
  FMAs on the integer values, exact because every block sum stays below 2^24, so its results
  are bit-identical to the VNNI cores'; "sdot" uses AArch64 sdot (signed bytes, weights made
  signed first), where the CPU has the dot-product extension (`HAS_SDOT`: the kernel's
  AT_HWCAP and LLVM's target agree). Int4 codes (two a byte) are unpacked with a mask and a
  shift into the same eight steps.
- `quant_blocks`: activation quantization of full 32-blocks, generic vector IR.

The cores widen the fp16 weight scales 16 at a time with `fpext` (one vcvtph2ps / fcvtl;
integer ops where the target has no half conversion), the same float32 values everywhere.

Numba's fastmath pass also flags the float instructions emitted here (a division by 127
becomes a multiply by its float64 reciprocal); every such spot is exact regardless, and the
tests compare bit for bit against numpy.

Cached machine code is keyed on a hash of every edgerope/kernels source (jit.kernel), so an
edit here recompiles the kernels that inline these intrinsics.

Deliberately ignored: AVX2 vpmaddubsw, AMX, ARM i8mm (smmla) and SVE.
"""
import os

import llvmlite.binding as llb
from llvmlite import ir
from numba import types
from numba.core import cgutils, config, errors
from numba.extending import intrinsic

from edgerope.errors import ConfigError
from edgerope.kernels.layout import GEMM_TOKENS, GEOMETRY

I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F32 = ir.FloatType()
V16I = ir.VectorType(I32, 16)
V16F = ir.VectorType(F32, 16)
V16H = ir.VectorType(I16, 16)
V64B = ir.VectorType(I8, 64)
I8P = I8.as_pointer()

SDOT_TILE = 2   # AArch64: a token needs 4 int + 4 float q registers (32 in all)
GEMM_TILE = 8   # tokens sharing each 64-byte weight load (8 int + 8 float zmm accumulators);
#                 tiles are powers of two (the rest of T runs as tiles of 4, 2, 1)
GEMM_PAIR_TILE = 8  # "vnni", Q8_0 / Q4_0 / Q4_1 (_Fmt.pair): two row groups x 8 tokens a
#                     tile (16 int accumulators; each activation broadcast serves both groups:
#                     in-cache Q8_0 GEMM 1.16x vs one group; 3 or 4 groups x 4, or 2 x 16,
#                     were slower)
GEMV_CHAINS = 2  # independent vpdpbusd chains per block when only one token is in flight
AVXVNNI_TILE = 4  # 256-bit: each token needs 2 int + 2 float ymm accumulators (16 ymm in all)
K_TILE = 4  # K-quants: a token keeps two float sums per super-block and the running one
K_TILE_WIDE = 8  # Q5_K / Q6_K, whose codes take more ops to build: shared by more tokens
#                  (in-cache GEMM 1.05-1.17x vs 4; Q4_K is 0.94x at 8: kept at 4)


def target_features():
    """'+feature' names of the CPU Numba compiles for (honours NUMBA_CPU_NAME/CPU_FEATURES)."""
    if config.CPU_FEATURES is not None:
        feats = config.CPU_FEATURES
    elif config.CPU_NAME is not None and config.CPU_NAME != "host":
        return frozenset()  # a named generic target: assume nothing beyond the baseline
    else:
        feats = llb.get_host_cpu_features().flatten()
    return frozenset(f[1:] for f in feats.split(",") if f.startswith("+"))


FEATURES = target_features()
HAS_AVX512_VNNI = {"avx512f", "avx512bw", "avx512vnni"} <= FEATURES
HAS_AVX_VNNI = "avxvnni" in FEATURES or {"avx512vnni", "avx512vl"} <= FEATURES  # 256-bit
# tokens per weight load in the generic float core: 2 x tile accumulator vectors of 16 floats
# must fit the register file (32 zmm; 16 ymm on AVX2, 32 q on NEON hold half as much)
FLOAT_TILE = 8 if "avx512f" in FEATURES else 4
# llvm.fma becomes a libm call per lane without FMA hardware (x86 before Haswell): there the
# block accumulation uses a multiply and an add (other roundings, same integers)
_X86 = llb.get_process_triple().startswith(("x86", "i386", "i686"))
HAS_FMA = "fma" in FEATURES or not _X86
# fp16 -> fp32 in hardware (x86 F16C's vcvtph2ps, AArch64's fcvtl): elsewhere LLVM lowers
# `fpext half` to a compiler-rt call that the JIT cannot resolve, so integer ops do it there
HAS_F16_CONVERT = "f16c" in FEATURES if _X86 else llb.get_process_triple().startswith(
    ("aarch64", "arm64"))


_AARCH64 = llb.get_process_triple().startswith(("aarch64", "arm64"))
_HWCAP_ASIMDDP = 1 << 20  # AArch64 Linux AT_HWCAP bit: sdot / udot (FEAT_DotProd)


def _kernel_says_dotprod():
    """The kernel's word (AT_HWCAP) that this AArch64 CPU executes sdot: true on a Pi 5
    (Cortex-A76), false on a Pi 4 (Cortex-A72)."""
    try:
        import ctypes
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        return bool(getauxval(16) & _HWCAP_ASIMDDP)  # 16 = AT_HWCAP
    except (OSError, AttributeError):
        return False


def _emits(ir: str, needle: str) -> bool:
    """Whether LLVM, configured as numba configures it (the named CPU, or the host's
    features), turns the IR module `ir` into assembly containing `needle`."""
    try:
        # Numba initializes LLVM's native target when it first compiles; a probe may come
        # first (the kernels load lazily), so do it here (idempotent)
        llb.initialize_native_target()
        llb.initialize_native_asmprinter()
        cpu = config.CPU_NAME or llb.get_host_cpu_name()
        feats = config.CPU_FEATURES
        if feats is None:
            feats = "" if config.CPU_NAME else llb.get_host_cpu_features().flatten()
        tm = llb.Target.from_triple(llb.get_process_triple()).create_target_machine(
            cpu=cpu, features=feats)
        return needle in tm.emit_assembly(llb.parse_assembly(ir))
    except Exception:  # noqa: BLE001 - any failure means: no
        return False


def _target_emits_sdot():
    """Whether the code generator can select sdot (the named CPU or host features may lack
    +dotprod even where the CPU has it): a one-line probe."""
    return _emits(
        "define <4 x i32> @f(<4 x i32> %a, <16 x i8> %b, <16 x i8> %c) {\n"
        "  %r = call <4 x i32> @llvm.aarch64.neon.sdot.v4i32.v16i8(<4 x i32> %a, "
        "<16 x i8> %b, <16 x i8> %c)\n  ret <4 x i32> %r\n}\n"
        "declare <4 x i32> @llvm.aarch64.neon.sdot.v4i32.v16i8(<4 x i32>, <16 x i8>, "
        "<16 x i8>)\n", "sdot")


# AArch64 dot product (Raspberry Pi 5, Apple M, Graviton 2+): the kernel says the CPU has it
# and the code generator can emit it
HAS_SDOT = _AARCH64 and _kernel_says_dotprod() and _target_emits_sdot()

MODES = ("vnni", "avxvnni", "sdot", "portable")  # best first


def available():
    """SIMD modes this CPU can run, best first."""
    have = {"vnni": HAS_AVX512_VNNI, "avxvnni": HAS_AVX_VNNI, "sdot": HAS_SDOT,
            "portable": True}
    return [m for m in MODES if have[m]]


def _select_mode():
    want = os.environ.get("EDGEROPE_SIMD", "").strip().lower()
    if want in ("", "auto"):
        return available()[0]
    if want not in MODES:
        raise ConfigError(f"EDGEROPE_SIMD={want!r}: expected auto, {', '.join(MODES)}")
    if want not in available():
        raise ConfigError(f"EDGEROPE_SIMD={want}: this CPU lacks its instructions (it has: "
                          f"{', '.join(available())})")
    return want


MODE = _select_mode()


# ----------------------------------------------------------------------------- IR helpers

def _check_dtypes(**arrays):
    """The IR reads raw memory: insist on the element types it assumes. (Contiguous rows and
    shapes are checked at run time by the callers in packed.py.)"""
    for name, (ty, want) in arrays.items():
        want = want if isinstance(want, tuple) else (want,)
        if not isinstance(ty, types.Array) or ty.dtype not in want:
            raise errors.TypingError(f"{name}: expected a {' or '.join(map(str, want))} array,"
                                     f" got {ty}")


def _fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _data(context, builder, aty, val):
    """i8* to the first element of a Numba array."""
    return builder.bitcast(context.make_array(aty)(context, builder, val).data, I8P)


def _load(builder, base, off, ty, align=1):
    return builder.load(builder.bitcast(builder.gep(base, [off]), ty.as_pointer()), align=align)


def _splat(builder, scalar, vty):
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                  ir.Constant(ir.VectorType(I32, vty.count), [0] * vty.count))


def _fma(builder):
    """(a, b, c) -> a * b + c on <16 x float>: llvm.fma (one rounding) where FMA exists."""
    if not HAS_FMA:
        return lambda a, b, c: builder.fadd(builder.fmul(a, b), c)
    fn = _fn(builder, "llvm.fma.v16f32", V16F, [V16F, V16F, V16F])
    return lambda a, b, c: builder.call(fn, [a, b, c])


def _half_to_float(builder, h, hardware=HAS_F16_CONVERT):
    """<n x i16> IEEE fp16 bit patterns -> <n x float>, exact (zeros, subnormals, normals;
    inf / nan never occur). `fpext` from half where the target converts in hardware; else
    integer ops with no subnormal float operand (flush-to-zero modes cannot touch them)."""
    n = h.type.count
    vf = ir.VectorType(F32, n)
    if hardware:
        return builder.fpext(builder.bitcast(h, ir.VectorType(ir.HalfType(), n)), vf)
    vi = ir.VectorType(I32, n)
    c = lambda v: ir.Constant(vi, [v] * n)  # noqa: E731
    h = builder.zext(h, vi)
    mag = builder.and_(h, c(0x7FFF))
    # normal: exponent rebased by 127 - 15, mantissa moved up 13 bits
    normal = builder.bitcast(builder.add(builder.shl(mag, c(13)), c(112 << 23)), vf)
    sub = builder.fmul(builder.sitofp(mag, vf), ir.Constant(vf, [2.0 ** -24] * n))  # m 2^-24
    f = builder.select(builder.icmp_unsigned("<", mag, c(0x400)), sub, normal)
    sign = builder.shl(builder.and_(h, c(0x8000)), c(16))
    return builder.bitcast(builder.or_(builder.bitcast(f, vi), sign), vf)


def _vpdpbusd(builder, bits):
    """(acc, a, b) -> acc + sum of 4 (unsigned a byte * signed b byte) per i32 lane, on
    <16 x i32> / <64 x i8> values; bits=256 does it as two 256-bit halves (AVX-VNNI)."""
    lanes = bits // 32
    vi, vb = ir.VectorType(I32, lanes), ir.VectorType(I8, 4 * lanes)
    name = f"llvm.x86.avx512.vpdpbusd.{bits}"
    if llb.llvm_version_info >= (22,):  # LLVM 22 types the byte operands as vectors of i8
        fn = _fn(builder, name, vi, [vi, vb, vb])
    else:
        fn = _fn(builder, name, vi, [vi, vi, vi])
    opty = fn.function_type.args[1]

    def half(v, h):
        if lanes == 16:
            return v
        n = v.type.count // 2
        return builder.shuffle_vector(v, ir.Constant(v.type, ir.Undefined),
                                      ir.Constant(ir.VectorType(I32, n),
                                                  list(range(h * n, h * n + n))))

    def dp(acc, a, b):
        a, b = builder.bitcast(a, V64B), builder.bitcast(b, V64B)
        parts = [builder.call(fn, [half(acc, h), builder.bitcast(half(a, h), opty),
                                   builder.bitcast(half(b, h), opty)])
                 for h in range(16 // lanes)]
        if lanes == 16:
            return parts[0]
        return builder.shuffle_vector(parts[0], parts[1],
                                      ir.Constant(ir.VectorType(I32, 16), list(range(16))))

    return dp


class _Fmt:
    """A packed weight format as the cores see it (geometry in edgerope.kernels.layout).

    32-column formats: `steps(builder, p, woff)` yields the block's eight (16 rows x 4
    columns) code vectors, each with the column offset of its 4 columns; weight = code - `bias`
    (`bias` 0, 8, 16 or 128); `mins`: a second fp16 per row and block (Q4_1 / Q5_1: weight =
    d code + m).
    K-quants (qk 256): `groups(builder, p, woff)` yields per scale sub-block (u, steps, col0):
    steps as above with columns relative to col0; `kind` "min" (Q4_K / Q5_K: weight =
    d sc_u code - dmin m_u, scales at byte `scales` + u of each row, mins at + 8 + u) or "sym"
    (Q6_K: weight = d sc_u (code - 32), signed scales; its `bias` 32).

    `prefetch`: (near, far) bytes ahead of the block being multiplied at which the GEMV cores
    ask for weights, into L1 and into L2 (see _prefetch).

    `pair`: the "vnni" GEMM core takes two row groups a tile (GEMM_PAIR_TILE); for codes
    that take few ops to build. Q5_0 / Q5_1, whose codes need their high bits merged, run
    out of registers with two groups' codes live (Gemma's Q5_0 ffn_in, 4096 x 640, pp512:
    ~1.15x slower in the engine); the K-quants measured no faster (0.94-1.05x)."""

    def __init__(self, name, steps=None, bias=0, mins=False, groups=None, kind=None,
                 scales=0, prefetch=(2048, 16384), wide=False, pair=False):
        geo = GEOMETRY[name]
        self.name, self.block_bytes, self.qk = name, geo.block_bytes, geo.qk
        self.steps, self.bias, self.mins = steps, bias, mins
        self.groups, self.kind, self.scales = groups, kind, scales
        self.prefetch = prefetch
        self.wide = wide  # K-quant codes built from several bit fields: the wider GEMM tile
        self.pair = pair
        # the geometry's sums (gemm_sums) are what these codes need
        assert geo.sums == ("min" if kind == "min" else "bias" if bias else None), name


def _vconst(v):
    return ir.Constant(V64B, [v] * 64)


def _bit_to(builder, v, k, to, mask):
    """(v >> k << to) & mask on <64 x i8>: bits k.. of each byte moved to bit `to`."""
    if k > to:
        v = builder.lshr(v, _vconst(k - to))
    elif k < to:
        v = builder.shl(v, _vconst(to - k))
    return builder.and_(v, _vconst(mask))


def _q8_steps(builder, p, woff):
    """Q8: wp[64 s + 4 r + i] = w[r, 4 s + i] + 128, one 64-byte vector per step."""
    for s in range(8):
        yield _load(builder, p["wp"], builder.add(woff, I64(64 * s)), V64B), 4 * s


def _q4_steps(builder, p, woff):
    """Q4: wp[64 s + 4 r + i] = (w[r, 4 s + i] + 8) | (w[r, 16 + 4 s + i] + 8) << 4 (Q4_0's
    own pairing of columns j and j + 16): low then high nibbles of one 64-byte vector."""
    for s in range(4):
        v = _load(builder, p["wp"], builder.add(woff, I64(64 * s)), V64B)
        yield builder.and_(v, _vconst(0x0F)), 4 * s
        yield builder.lshr(v, _vconst(4)), 16 + 4 * s


def _q5_steps(builder, p, woff):
    """Q5_0 / Q5_1: Q4's nibbles, each with its high bit from the block's high-bit vector
    (bit k of its bytes for step k; edgerope.formats.ggml_blocks)."""
    hv = _load(builder, p["wp"], builder.add(woff, I64(256)), V64B)
    for k, (v, col) in enumerate(_q4_steps(builder, p, woff)):
        yield builder.or_(v, _bit_to(builder, hv, k, 4, 0x10)), col


def _k4_groups(high):
    """Q4_K (high=False) / Q5_K: sub-block m (32 columns) is the low (m even) or high nibbles
    of code vectors [m // 2][s]; Q5_K adds bit m of high-bit vector [s]. Yields
    (m, steps, col0, unit): Q4_K's high nibbles on the unsigned (vnni) dots are masked in
    place (16 x the code, unit 1/16: the scale multiplies exactly the same) instead of
    shifted down, one op off the port the dots run on."""
    def groups(builder, p, woff):
        for m in range(8):
            steps = []
            in_place = m % 2 == 1 and not high and p["unsigned"]
            for s in range(8):
                v = _load(builder, p["wp"], builder.add(woff, I64(512 * (m // 2) + 64 * s)),
                          V64B)
                if in_place:
                    v = builder.and_(v, _vconst(0xF0))
                else:
                    v = builder.and_(v, _vconst(0x0F)) if m % 2 == 0 else builder.lshr(
                        v, _vconst(4))
                if high:
                    hv = _load(builder, p["wp"], builder.add(woff, I64(2048 + 64 * s)), V64B)
                    v = builder.or_(v, _bit_to(builder, hv, m, 4, 0x10))
                steps.append((v, 4 * s))
            yield m, steps, 32 * m, 1 / 16 if in_place else 1
    return groups


def _q6k_groups(builder, p, woff):
    """Q6_K: columns 128 h + 32 q + 4 s + i take the low (q < 2) or high nibble of low-bit
    vector [h][q % 2][s] and bits 2q, 2q + 1 of high-bit vector [h][s]; 16-column sub-blocks
    u = 8 h + 2 q + (s >= 4)."""
    for h in range(2):
        for q in range(4):
            steps = []
            for s in range(8):
                v = _load(builder, p["wp"], builder.add(
                    woff, I64(64 * (16 * h + 8 * (q % 2) + s))), V64B)
                v = builder.and_(v, _vconst(0x0F)) if q < 2 else builder.lshr(v, _vconst(4))
                hv = _load(builder, p["wp"], builder.add(woff, I64(2048 + 64 * (8 * h + s))),
                           V64B)
                steps.append((builder.or_(v, _bit_to(builder, hv, 2 * q, 4, 0x30)), 4 * s))
            yield 8 * h + 2 * q, steps[:4], 128 * h + 32 * q, 1
            yield (8 * h + 2 * q + 1, [(v, c - 16) for v, c in steps[4:]], 128 * h + 32 * q + 16,
                   1)


Q8 = _Fmt("q8", _q8_steps, bias=128, pair=True)
Q4 = _Fmt("q4", _q4_steps, bias=8, pair=True)
Q4_1 = _Fmt("q4_1", _q4_steps, mins=True, pair=True)
Q5_0 = _Fmt("q5_0", _q5_steps, bias=16)
Q5_1 = _Fmt("q5_1", _q5_steps, mins=True)
Q4_K = _Fmt("q4_k", groups=_k4_groups(False), kind="min", scales=2048, prefetch=(2304, 16384))
Q5_K = _Fmt("q5_k", groups=_k4_groups(True), kind="min", scales=2560, prefetch=(6656, 16384),
            wide=True)
Q6_K = _Fmt("q6_k", groups=_q6k_groups, kind="sym", bias=32, scales=3072,
            prefetch=(6656, 16384), wide=True)


def _prefetch(builder, p, woff):
    """GEMV: ask for the weight lines `near` bytes ahead of the block at woff into L1 and
    `far` bytes ahead into L2 (fmt.prefetch; one prefetch per 64-byte line; a no-op past the
    end). A thread streams its row groups front to back, but the hardware prefetchers stop at
    every 4 KiB page, so without this the cores stall on DRAM at each page: Q8_0 26.0 -> 29.0,
    Q5_0 19.6 -> 28.6, Q4_K 21.2 -> 24.3, Q6_K 16.8 -> 23.2 GB/s on a 0.6-1.1 GB matrix, 2
    threads; the K-quants' slower cores gain from the second, far request too (Q4_K 23.3 ->
    25.4, Q6_K 21.1 -> 25.7; bench/RESULTS.md, 2026-12-07). So do the 32-column formats' when
    the matrices are small (a 270M model's 0.1-2 MB per-layer matrices: a thread's stream
    starts with nothing in flight, and the near request alone is ~50 ns ahead of a core that
    runs at 40+ GB/s from cache): Gemma 3 270M decodes 4-6% faster, a 1B-class Q8_0 1-5%
    (bench/RESULTS.md, 2026-12-07, sixth session). Distances: the measured best per format."""
    pf = p["prefetch"]
    if pf is False:
        return
    fmt = p["fmt"]
    near, far = fmt.prefetch
    fn = _fn(builder, "llvm.prefetch.p0i8", ir.VoidType(), [I8P, I32, I32, I32])

    def ask():
        for i in range(0, fmt.block_bytes, 64):
            at = builder.gep(p["wp"], [builder.add(woff, I64(near + i))])
            builder.call(fn, [at, I32(0), I32(3), I32(1)])  # read, keep in all levels, data
            at = builder.gep(p["wp"], [builder.add(woff, I64(far + i))])
            builder.call(fn, [at, I32(0), I32(2), I32(1)])  # read, L2 and beyond, data
    if pf is True:
        ask()
    else:  # a GEMM of at most one tile of tokens streams its weights as a GEMV does
        with builder.if_then(pf, likely=False):
            ask()


# Exact integer dots of 16 rows: `idot(builder, p, steps, xo, xrow, chains, ncols)` ->
# per token a <16 x i32> of sum over steps (wv, col) of sum_i wv[4 r + i] * x[xo + col + i],
# x the token's int8 activations from element xo (the steps span ncols columns). The code
# bytes count as unsigned in the vnni dots and as signed in the others: callers make them
# agree (codes < 128, or the bias taken off first).

def _idot_vnni(builder, p, steps, xo, xrow, chains, ncols, init=None, bits=512):
    """vpdpbusd: code bytes unsigned, activations signed, 4 bytes broadcast to all rows.
    `init`: per token the vector the first chain starts from (else zero)."""
    return _idot_vnni_groups(builder, p, [steps], xo, xrow, chains,
                             None if init is None else [init], bits)[0]


def _idot_vnni_groups(builder, p, gsteps, xo, xrow, chains, init=None, bits=512):
    """The same for several row groups at once (gsteps: their steps, same columns): step by
    step, each activation broadcast serves every group. -> dots[group][token]."""
    dp = _vpdpbusd(builder, bits)
    nt, ng = len(xrow), len(gsteps)
    accs = [[[ir.Constant(V16I, None)] * chains for _ in range(nt)] for _ in range(ng)]
    if init is not None:
        for r in range(ng):
            for j in range(nt):
                accs[r][j][0] = init[r][j]
    for s, group_steps in enumerate(zip(*gsteps)):
        xc = builder.add(xo, I64(group_steps[0][1]))
        for j in range(nt):
            xw = _splat(builder, _load(builder, p["xq"], builder.add(xrow[j], xc), I32,
                                       align=1), V16I)
            for r, (wv, _) in enumerate(group_steps):
                accs[r][j][s % chains] = dp(accs[r][j][s % chains], wv, xw)
    out = []
    for r in range(ng):
        row = []
        for j in range(nt):
            idot = accs[r][j][0]
            for c in range(1, chains):
                idot = builder.add(idot, accs[r][j][c])
            row.append(idot)
        out.append(row)
    return out


def _idot_vnni256(builder, p, steps, xo, xrow, chains, ncols, init=None):
    return _idot_vnni(builder, p, steps, xo, xrow, chains, ncols, init, bits=256)


def _idot_sdot(builder, p, steps, xo, xrow, chains, ncols):
    """AArch64 sdot (signed x signed bytes, 4 per i32 lane): each 16-row x 4-column step is
    four sdot of 4 rows."""
    v4i, v16b = ir.VectorType(I32, 4), ir.VectorType(I8, 16)
    fn = _fn(builder, "llvm.aarch64.neon.sdot.v4i32.v16i8", v4i, [v4i, v16b, v16b])
    undef64 = ir.Constant(V64B, ir.Undefined)
    nt = len(xrow)
    # accumulators: per token and chain, four <4 x i32> (rows 4q .. 4q + 3)
    accs = [[[ir.Constant(v4i, None)] * 4 for _ in range(chains)] for _ in range(nt)]
    for s, (wv, col) in enumerate(steps):
        quads = [builder.shuffle_vector(wv, undef64, ir.Constant(
            ir.VectorType(I32, 16), list(range(16 * q, 16 * q + 16)))) for q in range(4)]
        xc = builder.add(xo, I64(col))
        for j in range(nt):
            xw = _load(builder, p["xq"], builder.add(xrow[j], xc), I32, align=1)
            xv = builder.bitcast(_splat(builder, xw, v4i), v16b)
            acc = accs[j][s % chains]
            for q in range(4):
                acc[q] = builder.call(fn, [acc[q], quads[q], xv])
    out = []
    for j in range(nt):
        quad = accs[j][0]
        for c in range(1, chains):
            quad = [builder.add(a, b2) for a, b2 in zip(quad, accs[j][c])]
        lo = builder.shuffle_vector(quad[0], quad[1], ir.Constant(ir.VectorType(I32, 8),
                                                                  list(range(8))))
        hi = builder.shuffle_vector(quad[2], quad[3], ir.Constant(ir.VectorType(I32, 8),
                                                                  list(range(8))))
        out.append(builder.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(I32, 16),
                                                              list(range(16)))))
    return out


def _idot_float(builder, p, steps, xo, xrow, chains, ncols):
    """Generic LLVM vector IR with float32 FMAs (any target, no integer dot instruction):
    codes (signed bytes) and activations are integers of magnitude <= 128 and <= 127, so
    every sum of up to 32 terms is below 2^24 and exact; converted back to integers.

    The FMAs take activations as broadcast memory operands: from `xq` itself when the caller
    passes float32 copies of the int8 activations (GEMM), else from a stack buffer the
    columns' int8 activations are converted into (GEMV; no allocation)."""
    fma = _fma(builder)  # exact either way: integer operands and sums below 2^24
    nt = len(xrow)
    if p["x_float"]:
        fx = builder.bitcast(p["xq"], F32.as_pointer())
        xaddr = [builder.add(builder.sdiv(xrow[j], I64(4)), xo) for j in range(nt)]
    else:
        vnb, vnf = ir.VectorType(I8, ncols), ir.VectorType(F32, ncols)
        buf = cgutils.alloca_once(builder, vnf, size=nt)  # static: in the entry block
        for j in range(nt):
            xv = _load(builder, p["xq"], builder.add(xrow[j], xo), vnb)
            builder.store(builder.sitofp(xv, vnf), builder.gep(buf, [I64(j)]), align=4)
        # an empty asm that may read the buffer keeps it in memory (else LLVM turns it back
        # into register shuffles, and broadcasts from registers are the bottleneck)
        builder.asm(ir.FunctionType(ir.VoidType(), [buf.type]), "", "r,~{memory}", [buf],
                    side_effect=True)
        fx = builder.bitcast(buf, F32.as_pointer())
        xaddr = [I64(ncols * j) for j in range(nt)]
    accs = [[ir.Constant(V16F, None)] * chains for _ in range(nt)]
    step = 0
    for wv, col in steps:
        for i in range(4):
            wf = builder.sitofp(builder.shuffle_vector(
                wv, ir.Constant(V64B, ir.Undefined),
                ir.Constant(ir.VectorType(I32, 16), [4 * r + i for r in range(16)])), V16F)
            c = step % chains
            step += 1
            for j in range(nt):
                xf = builder.load(builder.gep(fx, [builder.add(xaddr[j], I64(col + i))]),
                                  align=4)
                accs[j][c] = fma(wf, _splat(builder, xf, V16F), accs[j][c])
    out = []
    for j in range(nt):
        d = accs[j][0]
        for c in range(1, chains):
            d = builder.fadd(d, accs[j][c])
        out.append(builder.fptosi(d, V16I))
    return out


def _legacy_dot(idot, unsigned):
    """The exact dots of a 32-column block as float, weights = codes - bias: with unsigned
    dots (vnni) minus bias * the activation block sum, else on codes made signed first.
    GEMM cores whose `gemm_sums` is "bias" read `xsum` as -bias * the block sums already
    (packed.bias_sums) and start each token's dot from it: a broadcast load instead of a
    shift, a broadcast from a general register and a subtraction on the vector ports.
    -> dots[group][token] for the row groups at byte offsets `woffs` (several only on
    "vnni": `_idot_vnni_groups`)."""
    def dot(builder, p, b, woffs, xrow, chains):
        fmt = p["fmt"]
        gsteps = [list(fmt.steps(builder, p, woff)) for woff in woffs]
        if fmt.bias and not unsigned:  # mod 256: 128 flips the sign bit
            bias = _vconst(fmt.bias % 256)
            gsteps = [[(builder.sub(wv, bias), col) for wv, col in st] for st in gsteps]
        xo = builder.mul(b, I64(32))
        b4 = builder.mul(b, I64(4))
        nt = len(xrow)
        init = None
        if p["sums"] == "bias":
            init = [_splat(builder, _load(builder, p["xsum"], builder.add(p["srow"][j], b4),
                                          I32, align=4), V16I) for j in range(nt)]
        if len(woffs) > 1:
            dots = _idot_vnni_groups(builder, p, gsteps, xo, xrow, chains,
                                     None if init is None else [init] * len(woffs))
        else:
            dots = [idot(builder, p, gsteps[0], xo, xrow, chains, 32,
                         **({} if init is None else {"init": init}))]
        if fmt.bias and unsigned and init is None:
            shift = I32(fmt.bias.bit_length() - 1)  # bias is a power of two
            for j in range(nt):
                xsum = _load(builder, p["xsum"], builder.add(p["srow"][j], b4), I32, align=4)
                corr = _splat(builder, builder.shl(xsum, shift), V16I)
                for row in dots:
                    row[j] = builder.sub(row[j], corr)
        return [[builder.sitofp(d, V16F) for d in row] for row in dots]
    return dot


def _emit_tile(builder, p, gs, t, nt, chains, dot):
    """Rows 16g..16g+15 of each row group g in `gs` times tokens t..t+nt-1 of a 32-column
    format: out[t + j, 16g + r] over all blocks.

    p: dict of pointers / values (see _packed_intrinsic). `dot` gives per block, group and
    token the exact integer dot of the 16 rows as float; then facc = fma(dot, float(d) * xs,
    facc) in block order (d: 16 fp16 scales, 32 bytes), and for formats with mins
    facc = fma(float(m), xs * float(xsum), facc): the same roundings whichever `dot`.
    """
    fma = _fma(builder)
    fmt = p["fmt"]
    nb = p["nb"]
    facc = [[cgutils.alloca_once_value(builder, ir.Constant(V16F, None)) for _ in range(nt)]
            for _ in gs]
    gnbs = [builder.mul(g, nb) for g in gs]
    xrow = [builder.mul(builder.add(t, I64(j)), p["x_stride"]) for j in range(nt)]
    p["srow"] = [builder.mul(builder.add(t, I64(j)), p["s_stride"]) for j in range(nt)]
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        gbs = [builder.add(gnb, b) for gnb in gnbs]
        woffs = [builder.mul(gb, I64(fmt.block_bytes)) for gb in gbs]
        for woff in woffs:
            _prefetch(builder, p, woff)
        _stream_next(builder, p, b)
        dots = dot(builder, p, b, woffs, xrow, chains)
        b4 = builder.mul(b, I64(4))
        xss = [_load(builder, p["xs"], builder.add(p["srow"][j], b4), F32, align=4)
               for j in range(nt)]
        for r, gb in enumerate(gbs):
            soff = builder.mul(gb, I64(64 if fmt.mins else 32))
            sc = _half_to_float(builder, _load(builder, p["wsp"], soff, V16H, align=2))
            if fmt.mins:
                mn = _half_to_float(builder, _load(
                    builder, p["wsp"], builder.add(soff, I64(32)), V16H, align=2))
            for j in range(nt):
                acc = fma(dots[r][j], builder.fmul(sc, _splat(builder, xss[j], V16F)),
                          builder.load(facc[r][j]))
                if fmt.mins:
                    xsum = _load(builder, p["xsum"], builder.add(p["srow"][j], b4), I32,
                                 align=4)
                    sx = builder.fmul(xss[j], builder.sitofp(xsum, F32))
                    acc = fma(mn, _splat(builder, sx, V16F), acc)
                builder.store(acc, facc[r][j])
    for g, fr in zip(gs, facc):
        _store_tile(builder, p, g, t, fr)


def _emit_tile_k(builder, p, g, t, nt, chains, idot):
    """The same for a K-quant. Per super-block, the sub-block scales (and mins) as float32
    vectors, shared by the tile's tokens; per token and sub-block u the exact integer dot
    (Q6_K: minus 32 bsum_u, the codes' +32) accumulates as acc = fma(float(dot_u),
    float(sc_u), acc), and Q4_K / Q5_K's min term as accm = fma(float(m_u), float(bsum_u),
    accm) (bsum_u: the token's activation sum over the sub-block's columns); then
    facc = fma(acc, float(d) * xd, facc) and facc = fma(accm, float(dmin) * -xd, facc).
    Every product and partial sum is an integer, exact while below 2^24 (always for the min
    term; the scaled dots only pass it for near-maximal codes, scales and activations
    together, and then round once per FMA: still the same numbers on every path).
    Float scales keep the busy vector port free: the integer form took two vpmulld (two uops
    each) per token and sub-block, this takes one vcvtdq2ps and two FMAs (either port).
    GEMM cores with unsigned dots read the sums prepared (packed.k_min_sums: the 32-sums as
    float32; packed.bias_sums: Q6_K's -32 bsum_u, the dots' start): broadcast loads instead
    of two loads, an add, a conversion and a broadcast (or a shift, a broadcast and a
    subtraction) per token and sub-block. (Two row groups a tile, as the 32-column formats
    do, measured no faster here: 0.94-1.05x.)"""
    fma = _fma(builder)
    fmt = p["fmt"]
    nb = p["nb"]
    v16b = ir.VectorType(I8, 16)
    facc = [cgutils.alloca_once_value(builder, ir.Constant(V16F, None)) for _ in range(nt)]
    gnb = builder.mul(g, nb)
    xrow = [builder.mul(builder.add(t, I64(j)), p["x_stride"]) for j in range(nt)]
    srow = [builder.mul(builder.add(t, I64(j)), p["s_stride"]) for j in range(nt)]
    mrow = [builder.mul(builder.add(t, I64(j)), p["m_stride"]) for j in range(nt)]
    presummed = p["sums"] is not None
    with cgutils.for_range(builder, nb) as loop:
        b = loop.index
        gb = builder.add(gnb, b)
        woff = builder.mul(gb, I64(fmt.block_bytes))
        _prefetch(builder, p, woff)
        _stream_next(builder, p, b)
        xo0 = builder.mul(b, I64(256))
        sum0 = builder.mul(b, I64(64))  # 16 int32 sums per super-block
        acc = [ir.Constant(V16F, None)] * nt
        accm = [ir.Constant(V16F, None)] * nt
        for u, steps, col0, unit in fmt.groups(builder, p, woff):
            ncols = max(c for _, c in steps) + 4
            xo = builder.add(xo0, I64(col0))
            if p["sums"] == "bias":  # start from -32 bsum_u (the codes' +32)
                init = [_splat(builder, _load(builder, p["xsum"], builder.add(
                    mrow[j], builder.add(sum0, I64(4 * (col0 // 16)))), I32, align=4), V16I)
                    for j in range(nt)]
                dots = idot(builder, p, steps, xo, xrow, chains, ncols, init=init)
            else:
                dots = idot(builder, p, steps, xo, xrow, chains, ncols)
            scb = _load(builder, p["wp"], builder.add(woff, I64(fmt.scales + 16 * u)), v16b)
            if fmt.kind == "min":
                sc = builder.uitofp(scb, V16F)
                if unit != 1:  # a power of two: the same products
                    sc = builder.fmul(sc, ir.Constant(V16F, [unit] * 16))
                mv = builder.uitofp(_load(builder, p["wp"], builder.add(
                    woff, I64(fmt.scales + 16 * (8 + u))), v16b), V16F)
            else:
                sc = builder.sitofp(scb, V16F)
            for j in range(nt):
                if presummed:
                    if fmt.kind == "min":  # the 32-sum as float32, 8 a super-block
                        bs = _load(builder, p["xsum"], builder.add(mrow[j], builder.add(
                            builder.mul(b, I64(32)), I64(4 * (col0 // 32)))), F32, align=4)
                        accm[j] = fma(mv, _splat(builder, bs, V16F), accm[j])
                    acc[j] = fma(builder.sitofp(dots[j], V16F), sc, acc[j])
                    continue
                at = builder.add(mrow[j], builder.add(sum0, I64(4 * (col0 // 16))))
                bs = _load(builder, p["xsum"], at, I32, align=4)
                if fmt.kind == "min":  # 32 columns: two 16-sums
                    bs = builder.add(bs, _load(builder, p["xsum"], builder.add(at, I64(4)),
                                               I32, align=4))
                    accm[j] = fma(mv, _splat(builder, builder.sitofp(bs, F32), V16F), accm[j])
                    dj = dots[j]
                else:  # the codes' +32
                    shift = I32(fmt.bias.bit_length() - 1)
                    dj = builder.sub(dots[j], _splat(builder, builder.shl(bs, shift), V16I))
                acc[j] = fma(builder.sitofp(dj, V16F), sc, acc[j])
        soff = builder.mul(gb, I64(64 if fmt.kind == "min" else 32))
        d = _half_to_float(builder, _load(builder, p["wsp"], soff, V16H, align=2))
        if fmt.kind == "min":
            dmin = _half_to_float(builder, _load(builder, p["wsp"], builder.add(soff, I64(32)),
                                                 V16H, align=2))
        b4 = builder.mul(b, I64(4))
        for j in range(nt):
            xd = _load(builder, p["xs"], builder.add(srow[j], b4), F32, align=4)
            f = fma(acc[j], builder.fmul(d, _splat(builder, xd, V16F)), builder.load(facc[j]))
            if fmt.kind == "min":
                nxd = builder.fmul(xd, ir.Constant(F32, -1.0))
                f = fma(accm[j], builder.fmul(dmin, _splat(builder, nxd, V16F)), f)
            builder.store(f, facc[j])
    _store_tile(builder, p, g, t, facc)


def _store_tile(builder, p, g, t, facc):
    """out[t + j, 16g ..] = facc[j]: a whole row group, or the valid lanes of the last
    (padded) one."""
    r0 = builder.mul(g, I64(16))
    nvalid = builder.sub(p["n_out"], r0)
    full = builder.icmp_signed(">=", nvalid, I64(16))
    for j in range(len(facc)):
        ooff = builder.add(builder.mul(builder.add(t, I64(j)), p["o_stride"]),
                           builder.mul(r0, I64(4)))
        v = builder.load(facc[j])
        with builder.if_else(full, likely=True) as (then, other):
            with then:
                builder.store(v, builder.bitcast(builder.gep(p["out"], [ooff]),
                                                 V16F.as_pointer()), align=4)
            with other:
                with cgutils.for_range(builder, nvalid) as lane:
                    dst = builder.gep(p["out"], [builder.add(ooff, builder.mul(lane.index,
                                                                              I64(4)))])
                    builder.store(builder.extract_element(v, lane.index),
                                  builder.bitcast(dst, F32.as_pointer()), align=4)


def _packed_intrinsic(fmt, idot, unsigned, tile, gemv_chains, gemm_chains, doc, name, gemv,
                      pair_tile=0, sums=None):
    """pair_tile: tokens per tile when two row groups go together (0: one at a time); sums:
    how the core reads `xsum` (gemm_sums; None for a GEMV core)."""
    if fmt.qk == 256:
        emit = lambda b, p, gs, t, nt, ch: _emit_tile_k(b, p, gs[0], t, nt, ch,  # noqa: E731
                                                        idot)
    else:
        dot = _legacy_dot(idot, unsigned)
        emit = lambda b, p, gs, t, nt, ch: _emit_tile(b, p, gs, t, nt, ch, dot)  # noqa: E731

    def impl(typingctx, out, wp, wsp, xq, xs, xsum, g0, g1, t0, t1, strides):
        presum_float = sums == "min"
        _check_dtypes(out=(out, types.float32), wp=(wp, types.uint8), wsp=(wsp, types.uint16),
                      xq=(xq, (types.int8, types.float32) if idot is _idot_float
                          else types.int8),
                      xs=(xs, types.float32),
                      xsum=(xsum, types.float32 if presum_float else types.int32))
        sig = types.none(out, wp, wsp, xq, xs, xsum, g0, g1, t0, t1, strides)

        def codegen(context, builder, sig, args):
            ty = sig.args
            p = {name: _data(context, builder, ty[i], args[i]) for i, name in
                 enumerate(("out", "wp", "wsp", "xq", "xs", "xsum"))}
            astr = args[10]
            st = [context.cast(builder, builder.extract_value(astr, i), ty[10][i],
                               types.int64) for i in range(6)]
            p.update(nb=st[0], n_out=st[1], o_stride=st[2], x_stride=st[3], s_stride=st[4],
                     m_stride=st[5], x_float=ty[3].dtype == types.float32, fmt=fmt,
                     prefetch=True, unsigned=unsigned, sums=sums)
            g0v, g1v, t0v, t1v = (context.cast(builder, args[6 + i], ty[6 + i], types.int64)
                                  for i in range(4))
            if not gemv:  # a few tokens (batched decoding): the weights stream once
                p["prefetch"] = builder.icmp_signed("<=", builder.sub(t1v, t0v), I64(tile))
                # more: the first token block streams the next groups' (_stream_next)
                p["first"] = builder.and_(builder.icmp_signed("==", t0v, I64(0)),
                                          builder.not_(p["prefetch"]))
            if gemv:  # one token (t0): independent accumulator chains
                with cgutils.for_range(builder, g1v, start=g0v) as gl:
                    emit(builder, p, [gl.index], t0v, 1, gemv_chains)
                return context.get_dummy_value()
            if not pair_tile:
                with cgutils.for_range(builder, g1v, start=g0v) as gl:
                    _emit_tiles(builder, p, [gl.index], t0v, t1v, tile, gemv_chains,
                                gemm_chains, emit)
                return context.get_dummy_value()
            # pairs of row groups in whole tiles (each activation broadcast serves both); the
            # tokens past them, and an odd last group, one group at a time: one copy of the
            # single-group tiles (compile time: the pair tile alone is as big as them all)
            npairs = builder.sdiv(builder.sub(g1v, g0v), I64(2))
            nfull = builder.sdiv(builder.sub(t1v, t0v), I64(pair_tile))
            with cgutils.for_range(builder, npairs) as gl:
                g = builder.add(g0v, builder.mul(gl.index, I64(2)))
                with cgutils.for_range(builder, nfull) as tl:
                    t = builder.add(t0v, builder.mul(tl.index, I64(pair_tile)))
                    p["next"] = (builder.mul(builder.mul(builder.add(g, I64(2)), p["nb"]),
                                             I64(fmt.block_bytes)), tl.index,
                                 _next_lines(2 * fmt.block_bytes, GEMM_TOKENS // pair_tile),
                                 p["first"])
                    emit(builder, p, [g, builder.add(g, I64(1))], t, pair_tile, gemm_chains)
                    p["next"] = None
            g_single = builder.add(g0v, builder.mul(npairs, I64(2)))
            t_rest = builder.add(t0v, builder.mul(nfull, I64(pair_tile)))
            with cgutils.for_range(builder, g1v, start=g0v) as gl:
                ts = builder.select(builder.icmp_signed("<", gl.index, g_single), t_rest, t0v)
                _emit_tiles(builder, p, [gl.index], ts, t1v, tile, gemv_chains, gemm_chains,
                            emit)
            return context.get_dummy_value()

        return sig, codegen

    impl.__doc__ = doc
    impl.__name__ = impl.__qualname__ = name
    return intrinsic(impl)


def _stream_next(builder, p, b):
    """Inside a tile's block loop (block b): ask L2 for this block's share of the weights of
    the row groups that come next (p["next"] = (byte offset of their region, this tile's
    index among the token block's tiles, lines per block, condition), set by the caller for
    the tiles of a call's first token block). A row group's weights come from memory the
    first time (a matrix larger than the caches), one tile of tokens reads all of them, and
    that tile would wait for memory alone; spread over the tiles before it, the stream
    overlaps their dots. (The hardware prefetchers stop at each 4 KiB page.) Q8_0 16384 x
    2048 (35 MB), 128 tokens, 2 threads: 512-632 -> 738 GOP/s; 2048 x 2048 (in cache)
    882 -> 862; Q5_0 +5-9%, K-quants unchanged. 1B-class pp128: Q8_0 1.11x, Q4_K_M 1.06x;
    Gemma 3 270M pp512 (matrices in cache) 1.01x (bench/RESULTS.md, 2026-12-08)."""
    nx = p.get("next")
    if nx is None:
        return
    base, slot, lines, cond = nx
    fn = _fn(builder, "llvm.prefetch.p0i8", ir.VoidType(), [I8P, I32, I32, I32])
    with builder.if_then(cond, likely=True):
        off = builder.add(base, builder.mul(builder.add(builder.mul(slot, p["nb"]), b),
                                            I64(64 * lines)))
        for i in range(lines):
            at = builder.gep(p["wp"], [builder.add(off, I64(64 * i))])
            builder.call(fn, [at, I32(0), I32(2), I32(1)])  # read, L2 and beyond, data


def _next_lines(nbytes, tiles):
    """64-byte lines per block and tile that cover `nbytes` a block over `tiles` tiles."""
    return max(1, -(-nbytes // (64 * tiles)))


def _emit_tiles(builder, p, gs, t0v, t1v, tile, gemv_chains, gemm_chains, emit):
    """Tokens t0..t1-1 of the row groups gs: whole tiles, then the rest (< tile) in
    power-of-two tiles (less code to compile than tiles of 1..tile-1)."""
    nt_total = builder.sub(t1v, t0v)
    ntiles = builder.sdiv(nt_total, I64(tile))
    fmt = p["fmt"]
    with cgutils.for_range(builder, ntiles) as tl:
        t = builder.add(t0v, builder.mul(tl.index, I64(tile)))
        if p.get("first") is not None:  # the next group's weights, over this block's tiles
            g_next = builder.add(gs[-1], I64(1))
            p["next"] = (builder.mul(builder.mul(g_next, p["nb"]), I64(fmt.block_bytes)),
                         tl.index, _next_lines(fmt.block_bytes, GEMM_TOKENS // tile),
                         p["first"])
        emit(builder, p, gs, t, tile, gemm_chains)
        p["next"] = None
    rest = builder.srem(nt_total, I64(tile))
    t = builder.sub(t1v, rest)
    size = 1 << ((tile - 1).bit_length() - 1) if tile > 1 else 0  # the rest's top bit
    while size >= 1:
        bit = builder.and_(rest, I64(size))
        has = builder.icmp_signed("!=", bit, I64(0))
        with builder.if_then(has):
            emit(builder, p, gs, t, size, gemv_chains if size == 1 else gemm_chains)
        t = builder.add(t, builder.select(has, I64(size), I64(0)))
        size //= 2


_CORE_DOC = """out[t, 16g + r] for g in [g0, g1), t in [t0, t1): the packed {fmt} matmul core.

    (out, wp, wsp, xq, xs, xsum, g0, g1, t0, t1, strides) with strides = (nb, n_out, out row
    stride, xq row stride, xs row stride, xsum row stride), the last four in bytes. Tokens go
    in tiles (each weight vector loaded once per tile); the GEMV core takes token t0 alone,
    with independent accumulator chains instead. GEMM cores on unsigned dots read xsum
    prepared: -bias * the block sums for a 32-column format with a code bias and for Q6_K
    (bias 32; packed.bias_sums), the 32-column sums as float32 for Q4_K / Q5_K
    (packed.k_min_sums).

    {path}"""

# mode -> (exact block dot, its codes unsigned?, tokens per tile (32-column formats,
# K-quants, wide K-quants), accumulator chains for a single token, doc)
_PATHS = {
    "vnni": (_idot_vnni, True, (GEMM_TILE, K_TILE, K_TILE_WIDE), GEMV_CHAINS,
             "512-bit vpdpbusd (AVX-512 VNNI)."),
    "avxvnni": (_idot_vnni256, True, (AVXVNNI_TILE,) * 3, GEMV_CHAINS,
                "256-bit vpdpbusd (AVX-VNNI, or AVX-512 VNNI + VL): the same numbers as with "
                "512 bits."),
    "sdot": (_idot_sdot, False, (SDOT_TILE,) * 3, GEMV_CHAINS,
             "AArch64 sdot (FEAT_DotProd: Cortex-A76 / Raspberry Pi 5 and later): the same "
             "numbers."),
    "portable": (_idot_float, False, (FLOAT_TILE,) * 3, 4,
                 "Generic vector IR (float32 FMAs on exact integers): no target-specific "
                 "instructions."),
}
_CORES = {}


def unsigned_dots(mode):
    """Whether the cores of `mode` take codes unsigned (a format's bias is then subtracted
    as bias * the activation sums; the GEMM cores read those pre-scaled, see _legacy_dot)."""
    return _PATHS[mode][1]


def gemm_sums(fmt, mode):
    """What the GEMM cores of `fmt` on SIMD path `mode` read as `xsum` -- the one place the
    cores and their callers (packed._products) take it from: on unsigned dots the format's
    layout.Geometry.sums, "min" for Q4_K / Q5_K (the 32-column sums as float32:
    packed.k_min_sums), "bias" for codes with a bias (-fmt.bias * the block sums, each
    dot's start: packed.bias_sums), else None: the block sums as quantized (also on signed
    dots). GEMV cores always read the sums as quantized."""
    return GEOMETRY[fmt.name].sums if unsigned_dots(mode) else None


def core(fmt, mode, gemv=False):
    """The matmul core intrinsic of format `fmt` (a _Fmt) on SIMD path `mode` (one of MODES;
    only compile one that available() lists), made once per (fmt, mode, gemv): gemv=True
    multiplies token t0 alone (the tile code is not compiled in), else tokens t0..t1-1 in
    tiles."""
    key = (fmt.name, mode, gemv)
    if key not in _CORES:
        idot, unsigned, tiles, gemv_chains, doc = _PATHS[mode]
        _CORES[key] = _packed_intrinsic(
            fmt, idot, unsigned, tiles[0 if fmt.qk != 256 else 2 if fmt.wide else 1],
            gemv_chains, 1,
            _CORE_DOC.format(fmt=fmt.name, path=doc),
            f"{fmt.name}p_{'gemv' if gemv else 'gemm'}_core_{mode}", gemv,
            GEMM_PAIR_TILE if mode == "vnni" and fmt.pair else 0,
            None if gemv else gemm_sums(fmt, mode))
    return _CORES[key]


def _emit_quant(builder, pq, ps, psum, px, n):
    """IR of quant_blocks: n full blocks from px (float*) into pq, ps, psum (i8* each)."""
    v32 = lambda t: ir.VectorType(t, 32)  # noqa: E731
    umax = _fn(builder, "llvm.vector.reduce.umax.v32i32", I32, [v32(I32)])
    radd = _fn(builder, "llvm.vector.reduce.add.v32i32", I32, [v32(I32)])
    rnd = _fn(builder, "llvm.round.v32f32", v32(F32), [v32(F32)])
    vmin = _fn(builder, "llvm.minnum.v32f32", v32(F32), [v32(F32), v32(F32)])
    vmax = _fn(builder, "llvm.maxnum.v32f32", v32(F32), [v32(F32), v32(F32)])

    def amax(b):
        xv = _load(builder, px, builder.mul(b, I64(128)), v32(F32), align=4)
        bits = builder.and_(builder.bitcast(xv, v32(I32)),
                            ir.Constant(v32(I32), [0x7FFFFFFF] * 32))
        return xv, builder.bitcast(builder.call(umax, [bits]), F32)

    def scales(am, w):
        # w blocks at once: the float64 divisions as vectors
        vf, vd = ir.VectorType(F32, w), ir.VectorType(ir.DoubleType(), w)
        v = ir.Constant(vf, ir.Undefined)
        for i, a in enumerate(am):
            v = builder.insert_element(v, a, I32(i))
        d = builder.fptrunc(builder.fdiv(builder.fpext(v, vd), ir.Constant(vd, [127.0] * w)),
                            vf)
        inv = builder.fptrunc(builder.fdiv(ir.Constant(vd, [1.0] * w), builder.fpext(d, vd)),
                              vf)
        pos = builder.fcmp_ordered(">", d, ir.Constant(vf, [0.0] * w))
        inv = builder.select(pos, inv, ir.Constant(vf, [0.0] * w))
        return ([builder.extract_element(d, I32(i)) for i in range(w)],
                [builder.extract_element(inv, I32(i)) for i in range(w)])

    def quant(b, xv, d, inv):
        q = builder.call(rnd, [builder.fmul(xv, _splat(builder, inv, v32(F32)))])
        q = builder.call(vmin, [q, ir.Constant(v32(F32), [127.0] * 32)])
        q = builder.call(vmax, [q, ir.Constant(v32(F32), [-127.0] * 32)])
        qi = builder.fptosi(q, v32(I32))
        builder.store(builder.trunc(qi, v32(I8)),
                      builder.bitcast(builder.gep(pq, [builder.mul(b, I64(32))]),
                                      v32(I8).as_pointer()), align=1)
        b4 = builder.mul(b, I64(4))
        builder.store(d, builder.bitcast(builder.gep(ps, [b4]), F32.as_pointer()), align=4)
        builder.store(builder.call(radd, [qi]),
                      builder.bitcast(builder.gep(psum, [b4]), I32.as_pointer()), align=4)

    def blocks(b0, w):
        bs = [builder.add(b0, I64(i)) for i in range(w)]
        xa = [amax(b) for b in bs]
        ds, invs = scales([a for _, a in xa], w)
        for i in range(w):
            quant(bs[i], xa[i][0], ds[i], invs[i])

    n8 = builder.mul(builder.sdiv(n, I64(8)), I64(8))
    with cgutils.for_range(builder, builder.sdiv(n, I64(8))) as loop:
        blocks(builder.mul(loop.index, I64(8)), 8)
    with cgutils.for_range(builder, n, start=n8) as loop:
        blocks(loop.index, 1)


@intrinsic
def quant_blocks(typingctx, xq, xs, xsum, x, nfull):
    """Q8 quantization of the first nfull full 32-blocks of one row (generic vector IR).

    Per block: amax as an unsigned max of the |x| bit patterns (same order as the floats),
    d = float32(amax / 127 in float64), inv = float32(1 / d in float64) (0 if d == 0),
    q = llvm.round(x * inv) (ties away from zero, like roundf), clamped to +-127;
    xsum = sum of q. Same numbers as matmul.quantize_q8.
    """
    _check_dtypes(xq=(xq, types.int8), xs=(xs, types.float32), xsum=(xsum, types.int32),
                  x=(x, types.float32))
    sig = types.none(xq, xs, xsum, x, nfull)

    def codegen(context, builder, sig, args):
        ptrs = [_data(context, builder, sig.args[i], args[i]) for i in range(4)]
        _emit_quant(builder, *ptrs, context.cast(builder, args[4], sig.args[4], types.int64))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefetch(typingctx, arr, offset):
    """A hint that the 64-byte line at byte `offset` from arr's first element is wanted soon:
    one llvm.prefetch (read, kept in every cache level). Never faults, whatever the offset;
    portable (x86 prefetcht0, AArch64 prfm pldl1keep, nothing on a target without one)."""
    if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
        raise errors.TypingError("prefetch(array, integer byte offset)")
    sig = types.none(arr, offset)

    def codegen(context, builder, sig, args):
        base = _data(context, builder, sig.args[0], args[0])
        off = context.cast(builder, args[1], sig.args[1], types.int64)
        fn = _fn(builder, "llvm.prefetch.p0i8", ir.VoidType(), [I8P, I32, I32, I32])
        builder.call(fn, [builder.gep(base, [off]), I32(0), I32(3), I32(1)])
        return context.get_dummy_value()

    return sig, codegen


# ------------------------------------------------------------------- decode attention dots

def _sum16(builder, vs):
    """16 <16 x float> vectors -> one whose lane i is the sum of vs[i]'s lanes: a tree of
    pairwise half-and-half shuffles (15 adds, 30 shuffles) instead of 16 horizontal sums; the
    order of the additions is fixed (the same bits on every call)."""
    def idx(v):
        return ir.Constant(ir.VectorType(I32, 16), v)
    w = 8
    while len(vs) > 1:
        lo = [i for i in range(32) if (i % 16) % (2 * w) < w]
        hi = [i for i in range(32) if (i % 16) % (2 * w) >= w]
        vs = [builder.fadd(builder.shuffle_vector(a, b, idx(lo)),
                           builder.shuffle_vector(a, b, idx(hi)))
              for a, b in zip(vs[0::2], vs[1::2])]
        w //= 2
    return vs[0]


@intrinsic
def dot4x4(typingctx, q, qoff, k, koff, n):
    """(q, qoff, k, koff, n) -> the 16 dot products sum_{d < n} q[qoff[r] + d] k[koff[c] + d]
    (raw element offsets; index 4 r + c) as a tuple of float32: four query heads against four
    keys in decoding's attention. q float32, k float32 or fp16 bit patterns (uint16); n a
    multiple of 16, the caller keeps every row in bounds. Per 16 channels one FMA per pair
    into 16 vector sums, then `_sum16`; generic vector IR (any target). Keys of another
    type (int8, whose block scales this does not apply) type-check but give 16 NaNs, so
    that a kernel may hold the call in a branch it never takes for them."""
    if not (isinstance(q, types.Array) and q.dtype == types.float32 and
            isinstance(k, types.Array)):
        raise errors.TypingError("dot4x4(float32 q, qoff, k, koff, n)")
    ret = types.UniTuple(types.float32, 16)
    sig = ret(q, qoff, k, koff, n)
    half = k.dtype == types.uint16

    def codegen(context, builder, sig, args):
        ty = sig.args
        if ty[2].dtype not in (types.float32, types.uint16):
            nan = context.get_constant(types.float32, float("nan"))
            return context.make_tuple(builder, ret, [nan] * 16)
        fma = _fma(builder)
        f32p = F32.as_pointer()
        qp = builder.bitcast(_data(context, builder, ty[0], args[0]), f32p)
        kty = I16 if half else F32
        kp = builder.bitcast(_data(context, builder, ty[2], args[2]), kty.as_pointer())
        qo = [context.cast(builder, builder.extract_value(args[1], r), ty[1][r], types.int64)
              for r in range(4)]
        ko = [context.cast(builder, builder.extract_value(args[3], c), ty[3][c], types.int64)
              for c in range(4)]
        nv = builder.sdiv(context.cast(builder, args[4], ty[4], types.int64), I64(16))
        accs = [cgutils.alloca_once_value(builder, ir.Constant(V16F, None)) for _ in range(16)]
        with cgutils.for_range(builder, nv) as loop:
            d = builder.mul(loop.index, I64(16))
            qv = [builder.load(builder.bitcast(builder.gep(qp, [builder.add(qo[r], d)]),
                                               V16F.as_pointer()), align=4) for r in range(4)]
            kv = []
            for c in range(4):
                at = builder.gep(kp, [builder.add(ko[c], d)])
                if half:
                    h = builder.load(builder.bitcast(at, V16H.as_pointer()), align=2)
                    kv.append(_half_to_float(builder, h))
                else:
                    kv.append(builder.load(builder.bitcast(at, V16F.as_pointer()), align=4))
            for r in range(4):
                for c in range(4):
                    a = accs[4 * r + c]
                    builder.store(fma(qv[r], kv[c], builder.load(a)), a)
        tot = _sum16(builder, [builder.load(a) for a in accs])
        out = cgutils.get_null_value(context.get_value_type(ret))
        for i in range(16):
            out = builder.insert_value(out, builder.extract_element(tot, I32(i)), i)
        return out

    return sig, codegen


@intrinsic
def pv4(typingctx, out, ooff, p, poff, v, voff, ldv, n, ncols, ahead):
    """(out, ooff, p, poff, v, voff, ldv, n, ncols, ahead): for the four rows r (raw element offsets
    ooff[r] into out, poff[r] into p) out[ooff[r] + c] += sum_{k < n} p[poff[r] + k]
    v[voff + k ldv + c] for c < ncols (a multiple of 16): four query heads' weighted sum of
    n value rows in decoding's attention. out, p float32; v float32 or fp16 bit patterns
    (uint16). Up to 64 columns of the four rows stay in registers while the keys stream (one
    FMA per key, head and 16 columns, in key order: the same bits whatever the block's other
    heads); generic vector IR (any target). With each key the lines of those columns of the
    value row `ahead` keys on are asked for (a hint: it never faults, past the end either)."""
    if not (isinstance(out, types.Array) and out.dtype == types.float32 and
            isinstance(p, types.Array) and p.dtype == types.float32 and
            isinstance(v, types.Array) and v.dtype in (types.float32, types.uint16)):
        raise errors.TypingError("pv4(float32 out, ooff, float32 p, poff, float32|uint16 v, "
                                 "voff, ldv, n, ncols, ahead)")
    sig = types.none(out, ooff, p, poff, v, voff, ldv, n, ncols, ahead)
    half = v.dtype == types.uint16

    def codegen(context, builder, sig, args):
        ty = sig.args
        fma = _fma(builder)
        f32p = F32.as_pointer()
        op = builder.bitcast(_data(context, builder, ty[0], args[0]), f32p)
        pp = builder.bitcast(_data(context, builder, ty[2], args[2]), f32p)
        vty = I16 if half else F32
        vp = builder.bitcast(_data(context, builder, ty[4], args[4]), vty.as_pointer())
        i64 = lambda i: context.cast(builder, args[i], ty[i], types.int64)  # noqa: E731
        oo = [context.cast(builder, builder.extract_value(args[1], r), ty[1][r], types.int64)
              for r in range(4)]
        po = [context.cast(builder, builder.extract_value(args[3], r), ty[3][r], types.int64)
              for r in range(4)]
        voff, ldv, nk, ncols, ahead = (i64(i) for i in range(5, 10))
        pfn = _fn(builder, "llvm.prefetch.p0i8", ir.VoidType(), [I8P, I32, I32, I32])
        isz = 2 if half else 4

        def chunk(c0, nv):
            """Columns c0 .. c0 + 16 nv of the four rows over all keys."""
            ptrs = [[builder.bitcast(builder.gep(op, [builder.add(oo[r], builder.add(
                c0, I64(16 * i)))]), V16F.as_pointer()) for i in range(nv)] for r in range(4)]
            accs = [[cgutils.alloca_once_value(builder, builder.load(ptrs[r][i], align=4))
                     for i in range(nv)] for r in range(4)]
            with cgutils.for_range(builder, nk) as loop:
                k = loop.index
                row = builder.add(voff, builder.add(builder.mul(k, ldv), c0))
                there = builder.bitcast(builder.gep(vp, [builder.add(row, builder.mul(
                    ahead, ldv))]), I8P)
                for b in range(0, 16 * nv * isz, 64):  # the lines of this pass's columns
                    builder.call(pfn, [builder.gep(there, [I64(b)]), I32(0), I32(3), I32(1)])
                vs = []
                for i in range(nv):
                    at = builder.gep(vp, [builder.add(row, I64(16 * i))])
                    if half:
                        vs.append(_half_to_float(builder, builder.load(
                            builder.bitcast(at, V16H.as_pointer()), align=2)))
                    else:
                        vs.append(builder.load(builder.bitcast(at, V16F.as_pointer()),
                                               align=4))
                for r in range(4):
                    w = _splat(builder, builder.load(builder.gep(pp, [builder.add(po[r], k)]),
                                                     align=4), V16F)
                    for i in range(nv):
                        builder.store(fma(w, vs[i], builder.load(accs[r][i])), accs[r][i])
            for r in range(4):
                for i in range(nv):
                    builder.store(builder.load(accs[r][i]), ptrs[r][i], align=4)

        # 64 columns a pass (16 accumulators), then what is left 16 at a time
        n64 = builder.sdiv(ncols, I64(64))
        with cgutils.for_range(builder, n64) as loop:
            chunk(builder.mul(loop.index, I64(64)), 4)
        rest = builder.sdiv(builder.srem(ncols, I64(64)), I64(16))
        with cgutils.for_range(builder, rest) as loop:
            chunk(builder.add(builder.mul(n64, I64(64)), builder.mul(loop.index, I64(16))), 1)
        return context.get_dummy_value()

    return sig, codegen


# ----------------------------------------------------------------------------- float tiles

TILE_ROWS = FLOAT_TILE  # rows of a float tile: 8 x 32 columns in 16 zmm; 4 x 16 elsewhere
TILE_COLS = 32 if "avx512f" in FEATURES else 16


def _emit_tile_fma(builder, p, nv):
    """C[r, 0:16 nv] (+)= sum_k A[r, k] B[k, 0:16 nv] for the TILE_ROWS rows r: A's row r at
    element aoff[r], C's at coff[r]; B row k at boff + k ldb. One FMA per (row, 16 columns,
    k) in k order: the same roundings whatever the tile's other rows."""
    fma = _fma(builder)
    f32p = F32.as_pointer()
    mr = TILE_ROWS
    a, b, c = (builder.bitcast(p[n], f32p) for n in ("a", "b", "c"))
    arow = [builder.gep(a, [_load(builder, p["aoff"], I64(8 * r), I64, align=8)])
            for r in range(mr)]
    crow = [builder.gep(c, [_load(builder, p["coff"], I64(8 * r), I64, align=8)])
            for r in range(mr)]
    zero = ir.Constant(V16F, None)
    accs = []
    for r in range(mr):
        row = []
        for v in range(nv):
            at = builder.bitcast(builder.gep(crow[r], [I64(16 * v)]), V16F.as_pointer())
            old = builder.load(at, align=4)
            row.append(cgutils.alloca_once_value(builder, builder.select(p["acc"], old, zero)))
        accs.append(row)
    with cgutils.for_range(builder, p["kdim"]) as loop:
        k = loop.index
        bk = builder.gep(b, [builder.add(p["boff"], builder.mul(k, p["ldb"]))])
        bv = [builder.load(builder.bitcast(builder.gep(bk, [I64(16 * v)]), V16F.as_pointer()),
                           align=4) for v in range(nv)]
        for r in range(mr):
            av = _splat(builder, builder.load(builder.gep(arow[r], [k]), align=4), V16F)
            for v in range(nv):
                builder.store(fma(av, bv[v], builder.load(accs[r][v])), accs[r][v])
    for r in range(mr):
        for v in range(nv):
            at = builder.bitcast(builder.gep(crow[r], [I64(16 * v)]), V16F.as_pointer())
            builder.store(builder.load(accs[r][v]), at, align=4)


def _tile_fma_intrinsic(nv):
    def impl(typingctx, c, coff, a, aoff, b, boff, ldb, kdim, acc):
        _check_dtypes(c=(c, types.float32), a=(a, types.float32), b=(b, types.float32),
                      coff=(coff, types.int64), aoff=(aoff, types.int64))
        sig = types.none(c, coff, a, aoff, b, boff, ldb, kdim, acc)

        def codegen(context, builder, sig, args):
            ty = sig.args
            p = {n: _data(context, builder, ty[i], args[i]) for i, n in
                 ((0, "c"), (1, "coff"), (2, "a"), (3, "aoff"), (4, "b"))}
            for i, n in ((5, "boff"), (6, "ldb"), (7, "kdim")):
                p[n] = context.cast(builder, args[i], ty[i], types.int64)
            p["acc"] = context.cast(builder, args[8], ty[8], types.boolean)
            _emit_tile_fma(builder, p, nv)
            return context.get_dummy_value()

        return sig, codegen

    impl.__name__ = impl.__qualname__ = f"tile_fma{16 * nv}"
    impl.__doc__ = f"""(c, coff, a, aoff, b, boff, ldb, kdim, acc): TILE_ROWS rows x {16 * nv}
    columns of C = A B (acc: C += A B), float32, raw element offsets (see _emit_tile_fma);
    the caller keeps every row and column in bounds (offsets may repeat: equal rows)."""
    return intrinsic(impl)


tile_fma16 = _tile_fma_intrinsic(1)
tile_fma32 = _tile_fma_intrinsic(2)
