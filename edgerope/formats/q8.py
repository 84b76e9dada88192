"""The int8 weight format: llama.cpp's Q8_0 blocks, packed for integer dot products.

Logical form (edgerope.kernels.matmul.quantize_q8 makes it): wq int8 (N, K) and ws float32
(N, nb), nb = ceil(K / 32); W[n, c] = wq[n, c] * ws[n, c // 32].

Packed form, built once at load by `pack_q8(wq, ws) -> (wp, wsp)`:

- rows are grouped by 16: G = ceil(N / 16) groups (missing rows are zero, scale 0);
- `wp` uint8 (G, nb, 512), 64-byte aligned: block b of group g holds columns [32b, 32b + 32)
  of rows 16g..16g+15 as [k4 step s = 0..7][row r = 0..15][4 consecutive columns], i.e.
  wp[g, b, 64s + 4r + i] = wq[16g + r, 32b + 4s + i] + 128 (columns >= K hold 128, i.e. 0).
  One 64-byte load feeds one vpdpbusd: 16 rows x 4 columns.
- `wsp` uint16 (G, nb, 16), 32 bytes a block: IEEE fp16 bit patterns (numba cannot type
  float16 arrays; numpy reads them with .view(np.float16)), wsp[g, b, r] = ws[16g + r, b]
  rounded to fp16 to nearest even (llama.cpp's GGML_FP32_TO_FP16). The q bytes are computed
  from the float32 scale, so a matrix from `quantize_q8` packs into exactly llama.cpp's Q8_0
  (q from the float32 d, d stored as fp16), and a GGUF Q8_0 tensor (fp16 scales) packs
  bit for bit. A scale that is not finite in fp16 (|w| >= 127 * 65520, about 8.3e6, or not
  finite) raises ScaleRangeError; subnormal fp16 scales are kept exactly.

576 + 32 bytes per 512 weights: 8.5 bits a weight, as Q8_0 (34 bytes per 32). Weights are
stored offset by +128 (unsigned) because vpdpbusd multiplies unsigned by signed bytes:
sum((w + 128) * x) = sum(w * x) + 128 * sum(x), and the correction needs only the activation
block sums. Same bytes as wq / ws (scales as fp16) up to the padding (rows to 16, columns
to 32).

The products over this layout (`q8p_gemv`, `q8p_gemm`, `q8p_embed`) are in
edgerope.kernels.packed; numpy-level code (shapes, scales, pack / unpack) is here.
"""
import numpy as np

from edgerope import kernels as K
from edgerope.formats.pages import weight_empty
from edgerope.kernels.layout import BLOCK_BYTES as _BLOCK_BYTES
from edgerope.kernels.layout import QK, ROWS, packed_shape  # noqa: F401 - packed_shape: API

BLOCK_BYTES = _BLOCK_BYTES["q8"]  # bytes of one packed (16-row, 32-column) block


class ScaleRangeError(ValueError):
    """A block scale that fp16 cannot hold (a weight beyond about +-8.3e6, or inf / nan)."""


def aligned_copy(a):
    """A copy of weights `a` in weight memory (edgerope.formats.pages: 64-byte aligned)."""
    out = weight_empty(a.shape, a.dtype)
    out[...] = a
    return out


def scales_to_f16(ws):
    """IEEE fp16 bit patterns (uint16) of float32 scales, rounded to nearest even (llama.cpp's
    GGML_FP32_TO_FP16; subnormal results exact); ScaleRangeError if one is not finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        h = np.asarray(ws, np.float32).astype(np.float16)
    bad = ~np.isfinite(h)
    if bad.any():
        n, b = (int(i[0]) for i in np.nonzero(bad))
        raise ScaleRangeError(
            f"{int(bad.sum())} weight block scale(s) do not fit float16 (row {n}, block {b}: "
            f"scale {float(np.asarray(ws)[n, b]):.6g}; int8 weights need finite |w| < 8.3e6)")
    return h.view(np.uint16)


def pack_q8(wq, ws):
    """(wp, wsp): the packed layout of a Q8 matrix (see the module docstring); ws float32,
    rounded to fp16 here (ScaleRangeError if out of range)."""
    wq = np.ascontiguousarray(wq, np.int8)
    n, k = wq.shape
    g, nb = packed_shape(n, k)
    if np.shape(ws) != (n, nb):
        raise ValueError(f"ws has shape {np.shape(ws)}, expected {(n, nb)}")
    wsh = scales_to_f16(ws)
    wp = weight_empty((g, nb, BLOCK_BYTES), np.uint8)
    wsp = weight_empty((g, nb, ROWS), np.uint16)
    if n and k:
        K.q8p_pack(wp, wsp, wq, wsh)
    return wp, wsp


def unpack_q8(wp, wsp, n, k):
    """(wq, ws) from the packed layout: the inverse of pack_q8 (numpy, for tests and tools);
    ws float32, the fp16 scales widened exactly."""
    g, nb = wp.shape[0], wp.shape[1]
    w = (wp.astype(np.int16) - 128).astype(np.int8).reshape(g, nb, 8, ROWS, 4)
    wq = w.transpose(0, 3, 1, 2, 4).reshape(g * ROWS, nb * QK)[:n, :k]
    ws = np.asarray(wsp).view(np.float16).transpose(0, 2, 1).reshape(g * ROWS, nb)[:n]
    return np.ascontiguousarray(wq), ws.astype(np.float32)
