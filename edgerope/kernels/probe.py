"""A memory read-bandwidth probe: the ceiling decoding is measured against (edgerope bench's
roofline)."""
import numpy as np

from edgerope.kernels.jit import kernel, prange

_CHUNKS = 256  # parallel chunks: each thread streams contiguous runs


@kernel(parallel=True)
def stream_sum(a):
    """Sum of the uint64 array a, each element read once: streams a from memory (time it
    over an array far larger than the caches)."""
    n = a.shape[0]
    total = np.uint64(0)
    for c in prange(_CHUNKS):
        s = np.uint64(0)
        for i in range(c * n // _CHUNKS, (c + 1) * n // _CHUNKS):
            s += a[i]
        total += s
    return total
