"""The int4 weight format: llama.cpp's Q4_0 blocks, packed for the integer-dot cores.

Q4_0 (ggml's block_q4_0): per row and 32-column block one scale d (fp16) and 32 4-bit codes
q in 0..15, weight = (q - 8) * d; byte j of the block's 16 (`qs`) holds column j in its low
nibble and column j + 16 in its high nibble. 18 bytes per 32 weights: 4.5 bits a weight.

Packed form, built by `pack_q4(qs, ws) -> (wp, wsp)` from qs uint8 (N, nb, 16) (Q4_0 `qs`
bytes per row and block) and ws float32 (N, nb):

- rows grouped by 16 as in edgerope.formats.q8: G = ceil(N / 16) (missing rows: codes 8,
  scale 0);
- `wp` uint8 (G, nb, 256), 64-byte aligned: wp[g, b, 64 s + 4 r + i] = qs[16 g + r, b, 4 s + i]
  for s = 0..3, i = 0..3 -- every byte is one Q4_0 byte, moved. One 64-byte load holds 16
  rows x (4 columns in low nibbles + the 4 columns 16 further in high nibbles): masked and
  shifted, it feeds two vpdpbusd (codes unsigned, activations signed), corrected by
  8 x the activation block sum;
- `wsp` uint16 (G, nb, 16): fp16 bit patterns of the scales, as in edgerope.formats.q8.

So a GGUF Q4_0 tensor packs bit for bit, and `quantize_q4` reproduces ggml's reference
quantizer (quantize_row_q4_0_ref: d = the signed value of largest magnitude / -8, codes
min(15, trunc(x / d + 8.5)) in float32, d stored as fp16).

The products (`q4p_gemv`, `q4p_gemm`, `q4p_embed`, activations from `quantize_act`) are in
edgerope.kernels.packed, bit-identical across SIMD paths as for int8.
"""
import numpy as np

from edgerope.formats.q8 import ScaleRangeError, packed_shape, scales_to_f16  # noqa: F401
from edgerope.kernels.layout import BLOCK_BYTES as _BLOCK_BYTES
from edgerope.kernels.layout import QK, ROWS
from edgerope.formats.pages import weight_empty

BLOCK_BYTES = _BLOCK_BYTES["q4"]  # ROWS * QK / 2


def quantize_q4(x):
    """(qs uint8 (N, nb, 16), d float32 (N, nb)) of x float32 (N, K), finite: ggml's Q4_0
    reference rounding (columns past K count as zeros)."""
    x = np.asarray(x, np.float32)
    n, k = x.shape
    nb = (k + QK - 1) // QK
    xb = np.zeros((n, nb * QK), np.float32)
    xb[:, :k] = x
    xb = xb.reshape(n, nb, QK)
    first = np.argmax(np.abs(xb), axis=2)[..., None]  # first of equal magnitudes, as ggml
    d = np.take_along_axis(xb, first, 2)[..., 0] / np.float32(-8.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    q = (xb * inv[..., None] + np.float32(8.5)).astype(np.int8)  # truncation, as C's cast
    q = np.minimum(q, 15).astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4), d.astype(np.float32)


def dequantize_q4(qs, ws, k):
    """float32 (N, k) weights of Q4_0 blocks (numpy; for tools and tests)."""
    qs = np.asarray(qs, np.uint8)
    q = np.concatenate([qs & 15, qs >> 4], axis=2).astype(np.float32) - 8.0
    w = q * np.asarray(ws, np.float32)[..., None]
    return np.ascontiguousarray(w.reshape(qs.shape[0], -1)[:, :k])


def pack_q4(qs, ws):
    """(wp, wsp): the packed layout of Q4_0 blocks (module docstring); ws float32, rounded to
    fp16 here (ScaleRangeError if out of range)."""
    qs = np.asarray(qs, np.uint8)
    n, nb = qs.shape[0], qs.shape[1]
    if qs.shape != (n, nb, 16) or np.shape(ws) != (n, nb):
        raise ValueError(f"qs {qs.shape} / ws {np.shape(ws)}: expected (N, nb, 16) / (N, nb)")
    wsh = scales_to_f16(ws)
    g = (n + ROWS - 1) // ROWS
    full = np.full((g * ROWS, nb, 16), 0x88, np.uint8)
    full[:n] = qs
    wp = weight_empty((g, nb, BLOCK_BYTES), np.uint8)
    wp[...] = full.reshape(g, ROWS, nb, 4, 4).transpose(0, 2, 3, 1, 4).reshape(g, nb, -1)
    sc = np.zeros((g * ROWS, nb), np.uint16)
    sc[:n] = wsh
    wsp = weight_empty((g, nb, ROWS), np.uint16)
    wsp[...] = sc.reshape(g, ROWS, nb).transpose(0, 2, 1)
    return wp, wsp


def unpack_q4(wp, wsp, n):
    """(qs, ws) from the packed layout, the inverse of pack_q4; ws float32 (fp16 exactly)."""
    g, nb = wp.shape[0], wp.shape[1]
    qs = np.asarray(wp).reshape(g, nb, 4, ROWS, 4).transpose(0, 3, 1, 2, 4)
    qs = qs.reshape(g * ROWS, nb, 16)[:n]
    ws = np.asarray(wsp).view(np.float16).transpose(0, 2, 1).reshape(g * ROWS, nb)[:n]
    return np.ascontiguousarray(qs), ws.astype(np.float32)


def q4_shape(n, k):
    """Shape of the packed (wp) array of an int4 (n, k) matrix."""
    g, nb = packed_shape(n, k)
    return g, nb, BLOCK_BYTES
