"""Row normalizations: RMSNorm (plain and Gemma's 1 + w) and LayerNorm.

Rows are the leading dims flattened: x is (M, n). Weights are (G, n) and row r uses w[r % G],
so G = 1 is an ordinary norm and G = H normalizes a (T * H, D) view with per-head weights.
Statistics are accumulated in float64 (Hugging Face uses float32; float64 is at least as
accurate and removes the dependence on summation order), the output is float32.
`out` may alias `x`: each row's statistics are taken before the row is written.
Serial on purpose: a norm costs O(M n), negligible next to the matmul that follows it.
"""
import numpy as np

from edgerope.kernels.jit import kernel


@kernel
def rms_norm(out, x, w, eps, add_one):
    """out = x / sqrt(mean(x^2) + eps) * (w or 1 + w), row r scaled by w[r % G]."""
    M, n = x.shape
    G = w.shape[0]
    one = np.float32(1.0) if add_one else np.float32(0.0)
    for r in range(M):
        ss = 0.0
        for i in range(n):
            v = np.float64(x[r, i])
            ss += v * v
        inv = np.float32(1.0 / np.sqrt(ss / n + eps))
        g = r % G
        for i in range(n):
            out[r, i] = (x[r, i] * inv) * (w[g, i] + one)


@kernel
def layer_norm(out, x, w, b, eps):
    """out = (x - mean) / sqrt(var + eps) * w + b (population variance), grouped like rms_norm."""
    M, n = x.shape
    G = w.shape[0]
    for r in range(M):
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
