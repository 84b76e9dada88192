"""The geometry of packed weight blocks as the integer-dot cores read them, the element
types of KV cache storage, and aligned allocation (numpy only: sizes can be computed
without loading numba).

A packed matrix of N rows and K columns is G = ceil(N / ROWS) row groups by
nb = ceil(K / qk) column blocks (qk = 32, or 256 for K-quants); each (group, block) holds
BLOCK_BYTES[fmt] bytes of codes (K-quants: and sub-block scales) and ROWS fp16 scales per
scale kind (d; d and a min). The byte order inside a block is each format's own
(edgerope.formats.q8 / q4 / ggml_blocks; simd._Fmt tells the cores).
"""
import numpy as np

ROWS = 16          # output rows per group (one zmm of int32 / float32 lanes)
GEMM_TOKENS = 64   # tokens per block of a GEMM (packed._gemm; simd spreads streams over it)
QK = 32            # columns per block of the 32-column formats (one scale)
QK_K = 256         # columns per super-block of the K-quants


class Geometry:
    """How a packed format is laid out: `qk` columns per block, `block_bytes` of codes (and,
    for K-quants, sub-block scales) per (16-row group, block), `scales` fp16 values per row
    and block in `wsp` (1: d; 2: d and a min), and the activations its products read
    (`act`: "q8_0" -- int8 per 32 columns with block sums -- or "q8_k": int8 per 256 with
    16-column sums). `sums`: what its GEMM cores on unsigned dots read prepared
    (simd.gemm_sums): "bias" (-bias x the activation sums: codes with a bias), "min" (the
    32-column sums as float32: Q4_K / Q5_K) or None."""

    __slots__ = ("name", "qk", "block_bytes", "scales", "act", "sums")

    def __init__(self, name, qk, block_bytes, scales, act, sums):
        self.name, self.qk, self.block_bytes = name, qk, block_bytes
        self.scales, self.act, self.sums = scales, act, sums

    @property
    def wsp_rows(self) -> int:
        return ROWS * self.scales


GEOMETRY = {g.name: g for g in (
    Geometry("q8", QK, ROWS * QK, 1, "q8_0", "bias"),            # Q8_0: codes + 128
    Geometry("q4", QK, ROWS * QK // 2, 1, "q8_0", "bias"),       # Q4_0: two codes a byte
    Geometry("q4_1", QK, ROWS * QK // 2, 2, "q8_0", None),       # Q4_1: + a min per block
    Geometry("q5_0", QK, ROWS * QK * 5 // 8, 1, "q8_0", "bias"),  # + a high-bit byte a lane
    Geometry("q5_1", QK, ROWS * QK * 5 // 8, 2, "q8_0", None),
    Geometry("q4_k", QK_K, ROWS * (128 + 16), 2, "q8_k", "min"),  # codes, 8 scales + 8 mins
    Geometry("q5_k", QK_K, ROWS * (128 + 32 + 16), 2, "q8_k", "min"),  # + high bits
    Geometry("q6_k", QK_K, ROWS * (128 + 64 + 16), 1, "q8_k", "bias"),  # low, high bits, 16
)}                                                                      # scales


def gemm_scratch_len(fmt: str, T: int, k: int) -> int:
    """float32 elements of the scratch a GEMM of packed format `fmt` takes for T tokens of k
    inputs (packed._gemm): its prepared activation sums (`sums`), as read by the cores on
    unsigned dots; 0 for formats without. Independent of the SIMD path, so that memory can
    be planned without loading numba (a path with signed dots leaves it unread)."""
    geo = GEOMETRY[fmt]
    nb = -(-int(k) // geo.qk)
    if geo.sums == "min":  # float32 sums of 32 columns
        return T * nb * geo.qk // 32
    if geo.sums == "bias":  # int32 per block sum: per 32 columns, or 16 for Q8_K's
        return T * nb * (1 if geo.qk == QK else QK_K // 16)
    return 0
BLOCK_BYTES = {name: g.block_bytes for name, g in GEOMETRY.items()}
SCALE_BYTES = 2 * ROWS  # the fp16 scales of one block (per scale kind)


def packed_shape(n: int, k: int, fmt: str = "q8") -> tuple[int, int]:
    """(G, nb): row groups and column blocks of a packed (n, k) matrix of format `fmt`."""
    qk = GEOMETRY[fmt].qk
    return (int(n) + ROWS - 1) // ROWS, (int(k) + qk - 1) // qk


def packed_nbytes(fmt: str, n: int, k: int) -> int:
    """Bytes of a packed (n, k) matrix of format `fmt`, scales included."""
    g, nb = packed_shape(n, k, fmt)
    geo = GEOMETRY[fmt]
    return g * nb * (geo.block_bytes + SCALE_BYTES * geo.scales)


def aligned_empty(shape, dtype, align=64):
    """An uninitialized array whose data starts on an `align`-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + align, np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + size].view(dtype).reshape(shape)


def act_buffers(t, k, act="q8_0"):
    """Preallocated int8 activations (xq, xs, xsum) for up to t tokens of k inputs, as
    packed.quantize_act ("q8_0": xs and xsum per 32 columns) or packed.quantize_act_k
    ("q8_k": xs per 256, xsum per 16; k a multiple of 256) fill them (slice [:T] per call)."""
    if act == "q8_k":
        nb = (int(k) + QK_K - 1) // QK_K
        return (aligned_empty((t, nb * QK_K), np.int8), np.empty((t, nb), np.float32),
                np.empty((t, 16 * nb), np.int32))
    nb = (int(k) + QK - 1) // QK
    return (aligned_empty((t, nb * QK), np.int8), np.empty((t, nb), np.float32),
            np.empty((t, nb), np.int32))


def act_nbytes(t, k, act="q8_0"):
    """Bytes of act_buffers(t, k, act) (alignment slack aside)."""
    if act == "q8_k":
        nb = (int(k) + QK_K - 1) // QK_K
        return int(t) * nb * (QK_K + 4 + 64)
    nb = (int(k) + QK - 1) // QK
    return int(t) * nb * (QK + 4 + 4)


# ----------------------------------------------------------------------------- KV cache

KV_DTYPES = {"f32": np.float32, "f16": np.uint16, "int8": np.int8}
KV_BLOCK = 32  # channels per int8 scale


def scale_shape(kv_type, capacity, n_kv, head_dim):
    """Shape of a cache's scale array (a 1-element placeholder for float types)."""
    if kv_type == "int8":
        return (n_kv, capacity, (head_dim + KV_BLOCK - 1) // KV_BLOCK)
    return (1, 1, 1)


# ------------------------------------------------------------------ prefill attention tiles

ATT_BLOCK = 64     # keys a work unit stages at a time (edgerope.kernels.attend_tiles)
ATT_MAX_ROWS = 8   # query rows of a float tile, at most (simd.TILE_ROWS: 8 or 4)


def att_stage_len(head_dim, v_dim):
    """Floats of one work unit's staging row: K^T (D x ATT_BLOCK), V (ATT_BLOCK x Dv), the
    score tile (rows x ATT_BLOCK)."""
    return head_dim * ATT_BLOCK + ATT_BLOCK * v_dim + ATT_MAX_ROWS * ATT_BLOCK
