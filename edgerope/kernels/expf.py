"""exp(x) for float32 that LLVM vectorizes: the activations' sigmoid and attention's softmax.

np.exp inside a Numba loop is one call to the C library's expf per element (~2.5 ns here);
this version is arithmetic only, so a loop over it becomes AVX-512 / NEON code (~0.3 ns a
SiLU). Method (Cephes' expf): n = round(x / ln 2), r = x - n ln 2 in two steps (Cody-Waite,
|r| <= ln 2 / 2), exp(r) by a degree-7 polynomial, times 2^n built from its exponent bits (as
2^(n-1) * 2, so n = 128 stays finite).

Accuracy (tests/test_kernels.py sweeps 2 million points against float64): relative error
<= 4e-7 (libm: <= 6e-8) on [-86.64, 88.72]; below -86.64 the result is 0 (exp < 2.4e-38, so
the absolute error is below 2.4e-38); above 88.72, inf; -inf -> 0, inf -> inf, NaN -> NaN.
"""
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from edgerope.kernels.jit import kernel

_LO = np.float32(-86.64)       # 2^(n-1) stays a normal number: n >= -125
_HI = np.float32(88.72283)     # ln(FLT_MAX)
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)         # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI exact in 9 bits
_LN2_LO = np.float32(-2.12194440e-4)


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The float32 whose IEEE bit pattern is the int32 `bits`."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return sig, codegen


@kernel
def exp32(x):
    """exp(x) for a float32 x (see the module docstring for range and accuracy)."""
    xc = min(max(x, _LO), _HI)
    n = np.floor(xc * _LOG2E + np.float32(0.5))
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    y = p * r * r + r + np.float32(1.0)
    y = y * _f32_from_bits((np.int32(n) + np.int32(126)) << np.int32(23)) * np.float32(2.0)
    if x > _HI:
        y = np.float32(np.inf)
    if x < _LO:
        y = np.float32(0.0)
    if x != x:
        y = x
    return y


@kernel
def exp32_array(out, x):
    """out = exp32(x) elementwise over 1-D float32 arrays (for tests and benchmarks)."""
    for i in range(x.shape[0]):
        out[i] = exp32(x[i])
