"""Row normalizations: RMSNorm (plain and Gemma's 1 + w) and LayerNorm.

Rows are the leading dims flattened: x is (M, n). Weights are (G, n) and row r uses w[r % G],
so G = 1 is an ordinary norm and G = H normalizes a (T * H, D) view with per-head weights.
Statistics are accumulated in float64 (Hugging Face uses float32; float64 is at least as
accurate and removes the dependence on summation order), the output is float32.
`out` may alias `x`: each row's statistics are taken before the row is written.
Rows are independent: a small call (decoding) runs serially, no parallel region; from
PARALLEL_MIN elements on (prefill chunks) the rows are split over the threads -- the same
numbers either way.
"""
import numpy as np

from edgerope.kernels.jit import kernel, prange

PARALLEL_MIN = 1 << 16  # elements: below, a parallel region costs more than it saves
_CHUNK = 16  # rows per parallel task


@kernel
def _mean_square(x):
    """mean(x^2) of a row x (1-D), accumulated in float64."""
    ss = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        ss += v * v
    return ss / x.shape[0]


@kernel
def _rms_rows(out, x, w, eps, one, r0, r1):
    """Rows r0..r1-1 as 1-D views. In place (out is x) through a loop over one array: LLVM
    guards its vectorized loops with an overlap check of out and x, which exact aliasing
    fails, so the two-array loop ran scalar in place (2.5-3x slower; bench in the commit)."""
    G = w.shape[0]
    in_place = out.ctypes.data == x.ctypes.data and out.strides == x.strides
    for r in range(r0, r1):
        xr, wr = x[r], w[r % G]
        inv = np.float32(1.0 / np.sqrt(_mean_square(xr) + eps))
        if in_place:
            for i in range(xr.shape[0]):
                xr[i] = (xr[i] * inv) * (wr[i] + one)
        else:
            o = out[r]
            for i in range(xr.shape[0]):
                o[i] = (xr[i] * inv) * (wr[i] + one)


@kernel(parallel=True)
def rms_norm(out, x, w, eps, add_one):
    """out = x / sqrt(mean(x^2) + eps) * (w or 1 + w), row r scaled by w[r % G]."""
    M, n = x.shape
    one = np.float32(1.0) if add_one else np.float32(0.0)
    if M * n < PARALLEL_MIN:
        _rms_rows(out, x, w, eps, one, 0, M)
        return
    for c in prange((M + _CHUNK - 1) // _CHUNK):
        _rms_rows(out, x, w, eps, one, c * _CHUNK, min(M, c * _CHUNK + _CHUNK))


@kernel
def _layer_rows(out, x, w, b, eps, r0, r1):
    n = x.shape[1]
    G = w.shape[0]
    for r in range(r0, r1):
        s = 0.0
        for i in range(n):
            s += np.float64(x[r, i])
        mean = s / n
        ss = 0.0
        for i in range(n):
            d = np.float64(x[r, i]) - mean
            ss += d * d
        inv = 1.0 / np.sqrt(ss / n + eps)
        g = r % G
        for i in range(n):
            out[r, i] = np.float32((np.float64(x[r, i]) - mean) * inv) * w[g, i] + b[g, i]


@kernel(parallel=True)
def layer_norm(out, x, w, b, eps):
    """out = (x - mean) / sqrt(var + eps) * w + b (population variance), grouped like rms_norm."""
    M, n = x.shape
    if M * n < PARALLEL_MIN:
        _layer_rows(out, x, w, b, eps, 0, M)
        return
    for c in prange((M + _CHUNK - 1) // _CHUNK):
        _layer_rows(out, x, w, b, eps, c * _CHUNK, min(M, c * _CHUNK + _CHUNK))
