"""The geometry of packed weight blocks as the integer-dot cores read them, the element
types of KV cache storage, and aligned allocation (numpy only: sizes can be computed
without loading numba).

A packed matrix of N rows and K columns is G = ceil(N / ROWS) row groups by
nb = ceil(K / QK) column blocks; each (group, block) holds BLOCK_BYTES[fmt] bytes of codes
and ROWS fp16 scales (SCALE_BYTES). The byte order inside a block is each format's own
(edgerope.formats.q8 / q4; simd._Fmt tells the cores).
"""
import numpy as np

ROWS = 16          # output rows per group (one zmm of int32 / float32 lanes)
QK = 32            # columns per block (one scale)
BLOCK_BYTES = {"q8": ROWS * QK, "q4": ROWS * QK // 2}  # codes of one block: 8 / 4 bits each
SCALE_BYTES = 2 * ROWS  # the fp16 scales of one block


def packed_shape(n: int, k: int) -> tuple[int, int]:
    """(G, nb): row groups and column blocks of a packed (n, k) matrix (any packed format)."""
    return (int(n) + ROWS - 1) // ROWS, (int(k) + QK - 1) // QK


def packed_nbytes(fmt: str, n: int, k: int) -> int:
    """Bytes of a packed (n, k) matrix of format `fmt` ("q8", "q4"), scales included."""
    g, nb = packed_shape(n, k)
    return g * nb * (BLOCK_BYTES[fmt] + SCALE_BYTES)


def aligned_empty(shape, dtype, align=64):
    """An uninitialized array whose data starts on an `align`-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + size].view(dtype).reshape(shape)


def act_buffers(t, k):
    """Preallocated int8 activations (xq, xs, xsum) for up to t tokens of k inputs, as
    packed.quantize_act fills them (slice [:T] per call)."""
    nb = (int(k) + QK - 1) // QK
    return (aligned_empty((t, nb * QK), np.int8), np.empty((t, nb), np.float32),
            np.empty((t, nb), np.int32))


def act_nbytes(t, k):
    """Bytes of act_buffers(t, k) (alignment slack aside)."""
    nb = (int(k) + QK - 1) // QK
    return int(t) * nb * (QK + 4 + 4)


# ----------------------------------------------------------------------------- KV cache

KV_DTYPES = {"f32": np.float32, "f16": np.uint16, "int8": np.int8}
KV_BLOCK = 32  # channels per int8 scale


def scale_shape(kv_type, capacity, n_kv, head_dim):
    """Shape of a cache's scale array (a 1-element placeholder for float types)."""
    if kv_type == "int8":
        return (capacity, n_kv, (head_dim + KV_BLOCK - 1) // KV_BLOCK)
    return (1, 1, 1)
