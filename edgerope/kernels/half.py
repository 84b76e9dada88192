"""IEEE fp16 <-> float32 for Numba code: scalar intrinsics over uint16 bit patterns.

Numba cannot type float16 arrays on the CPU, so fp16 data (f16 KV caches, fp16 weight scales)
is held as uint16 and converted with `h2f` / `f2h` inside kernels. Both are exact IEEE
conversions (f2h rounds to nearest even, overflows to inf, keeps subnormals) and are written
as LLVM IR that the loop vectorizer widens: `fpext` / `fptrunc` from `half` where the target
converts in hardware (x86 F16C: vcvtph2ps / vcvtps2ph; AArch64: fcvtl / fcvtn); integer ops
elsewhere, because LLVM would otherwise call compiler-rt helpers the JIT cannot resolve.
"""
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from edgerope.kernels.simd import HAS_F16_CONVERT, _half_to_float

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_F32 = ir.FloatType()


def _f2h_ir(builder, x, hardware=HAS_F16_CONVERT):
    """float -> i16 fp16 bits, round to nearest even (inf / nan kept as inf / nan)."""
    if hardware:
        return builder.bitcast(builder.fptrunc(x, ir.HalfType()), _I16)
    c = lambda v: ir.Constant(_I32, v)  # noqa: E731
    u = builder.bitcast(x, _I32)
    sign = builder.and_(u, c(0x80000000))
    a = builder.xor(u, sign)  # |x| bits
    # overflow (>= 65520 rounds to inf) and inf / nan
    big = builder.select(builder.icmp_unsigned(">", a, c(255 << 23)), c(0x7E00), c(0x7C00))
    # subnormal results: adding 0.5 (as float) lets the FPU round the low bits to nearest even
    magic = c(((127 - 15) + (23 - 10) + 1) << 23)
    fsum = builder.fadd(builder.bitcast(a, _F32), builder.bitcast(magic, _F32))
    sub = builder.sub(builder.bitcast(fsum, _I32), magic)
    # normal results: rebase the exponent, round the 13 dropped bits to nearest even
    odd = builder.and_(builder.lshr(a, c(13)), c(1))
    nrm = builder.lshr(builder.add(builder.add(a, c(((15 - 127) << 23) + 0xFFF)), odd), c(13))
    o = builder.select(builder.icmp_unsigned("<", a, c(113 << 23)), sub, nrm)
    o = builder.select(builder.icmp_unsigned(">=", a, c((127 + 16) << 23)), big, o)
    o = builder.or_(o, builder.lshr(sign, c(16)))
    return builder.trunc(o, _I16)


def make(hardware=HAS_F16_CONVERT):
    """(h2f, f2h) intrinsics; hardware=False forces the integer versions (tests use both)."""
    @intrinsic
    def h2f(typingctx, h):
        """float32 value of the fp16 bit pattern h (uint16)."""
        if h != types.uint16:
            return None

        def codegen(context, builder, sig, args):
            v = builder.insert_element(ir.Constant(ir.VectorType(_I16, 1), None), args[0],
                                       ir.Constant(_I32, 0))
            f = _half_to_float(builder, v, hardware)
            return builder.extract_element(f, ir.Constant(_I32, 0))
        return types.float32(h), codegen

    @intrinsic
    def f2h(typingctx, x):
        """fp16 bit pattern (uint16) of float32 x, rounded to nearest even."""
        if x != types.float32:
            return None

        def codegen(context, builder, sig, args):
            return _f2h_ir(builder, args[0], hardware)
        return types.uint16(x), codegen

    return h2f, f2h


h2f, f2h = make()
