"""ggml's other block types kept as they are: Q4_1, Q5_0, Q5_1 (32 columns a block) and the
K-quants Q4_K, Q5_K, Q6_K (256-column super-blocks), as GGUF files hold them, packed for the
integer-dot cores without changing a bit (numpy only).

A GGUF row of such a tensor is a run of raw blocks (`RAW[fmt]`: columns and bytes per block).
Packing moves every byte, it converts nothing: rows are grouped by 16 as for Q8_0
(edgerope.formats.q8; missing rows are zero blocks) and each field of a raw block goes to
one place in `wp` uint8 (G, nb, block_bytes) or `wsp` uint16 (G, nb, 16 * scales):

- fp16 fields (d, and the min m / dmin where the type has one) -> wsp[g, b, 16 s + r];
- code bytes (nibbles, high-bit planes) -> "interleaved": byte 4 t + i of the field of row r
  goes to wp[g, b, off + 64 t + 4 r + i], so one 64-byte load holds 4 bytes of 16 rows, what
  one vpdpbusd / four sdot consume (Q4_0's and Q8_0's layouts are the same rule);
- per-sub-block scale bytes of the K-quants -> "by row": value u of row r at
  wp[g, b, off + 16 u + r] (one 16-byte load: sub-block u of 16 rows). Q4_K / Q5_K's 12 bytes
  of 6-bit scales and mins are unpacked to 16 bytes (8 scales, 8 mins): the only change of
  form, 4 bytes per 256 weights, undone exactly by `unpack`;
- Q5_0 / Q5_1's 32 high bits per block -> one byte per (row, i): bit 2 s + h of byte
  wp[g, b, 256 + 4 r + i] is the high bit of column 16 h + 4 s + i (s = 0..3), so the core's
  step k = 2 s + h (low then high nibbles of code vector s) finds its bits at bit k.

Sizes: Q4_1 5, Q5_0 5.5 (as the file), Q5_1 6 bits a weight; Q4_K 4.625 (file 4.5), Q5_K
5.625 (5.5), Q6_K 6.5625 (the file's own). `dequantize` is numpy, bit for bit gguf-py's
(`gguf.quants.dequantize`); the cores (edgerope.kernels.simd) read these layouts.
"""
from __future__ import annotations

import numpy as np

from edgerope.formats.q8 import ScaleRangeError
from edgerope.formats.pages import weight_empty
from edgerope.kernels.layout import GEOMETRY, ROWS

# ggml type name -> (columns, bytes) of one raw block, and the GGML type number
RAW = {"q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
       "q4_k": (256, 144), "q5_k": (256, 176), "q6_k": (256, 210)}
GGML_TYPES = {"q4_1": 3, "q5_0": 6, "q5_1": 7, "q4_k": 12, "q5_k": 13, "q6_k": 14}

# raw fields in file order: (name, bytes, where) with where = ("wsp", slot) | ("codes",
# wp offset) | ("rows", wp offset) | ("k4", wp offset) | ("hbits", wp offset)
_FIELDS = {
    "q4_1": (("d", 2, ("wsp", 0)), ("m", 2, ("wsp", 1)), ("qs", 16, ("codes", 0))),
    "q5_0": (("d", 2, ("wsp", 0)), ("qh", 4, ("hbits", 256)), ("qs", 16, ("codes", 0))),
    "q5_1": (("d", 2, ("wsp", 0)), ("m", 2, ("wsp", 1)), ("qh", 4, ("hbits", 256)),
             ("qs", 16, ("codes", 0))),
    "q4_k": (("d", 2, ("wsp", 0)), ("dmin", 2, ("wsp", 1)), ("scales", 12, ("k4", 2048)),
             ("qs", 128, ("codes", 0))),
    "q5_k": (("d", 2, ("wsp", 0)), ("dmin", 2, ("wsp", 1)), ("scales", 12, ("k4", 2560)),
             ("qh", 32, ("codes", 2048)), ("qs", 128, ("codes", 0))),
    "q6_k": (("ql", 128, ("codes", 0)), ("qh", 64, ("codes", 2048)),
             ("scales", 16, ("rows", 3072)), ("d", 2, ("wsp", 0))),
}


def _k4_unpack(sc12):
    """Q4_K / Q5_K 6-bit scales and mins: (..., 12) bytes -> (..., 16) = 8 scales, 8 mins."""
    a, b, c = sc12[..., 0:4], sc12[..., 4:8], sc12[..., 8:12]
    sc = np.concatenate([a & 63, (c & 15) | ((a >> 6) << 4)], axis=-1)
    mn = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return np.concatenate([sc, mn], axis=-1).astype(np.uint8)


def _k4_pack(v16):
    """The inverse of _k4_unpack."""
    sc, mn = v16[..., :8], v16[..., 8:]
    a = (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6)
    b = (mn[..., :4] & 63) | ((mn[..., 4:] >> 4) << 6)
    c = (sc[..., 4:] & 15) | ((mn[..., 4:] & 15) << 4)
    return np.concatenate([a, b, c], axis=-1).astype(np.uint8)


def _hbits_spread(qh4):
    """Q5 high bits (..., 4) bytes (a little-endian u32: bit c = column c) -> (..., 4) bytes
    of the packed form: byte i, bit 2 s + h = column 16 h + 4 s + i."""
    bits = np.unpackbits(qh4, axis=-1, bitorder="little")  # (..., 32): column c
    out = np.zeros(qh4.shape, np.uint8)
    for s in range(4):
        for h in range(2):
            out |= bits[..., 16 * h + 4 * s: 16 * h + 4 * s + 4] << np.uint8(2 * s + h)
    return out


def _hbits_gather(hb4):
    """The inverse of _hbits_spread."""
    bits = np.zeros(hb4.shape[:-1] + (32,), np.uint8)
    for s in range(4):
        for h in range(2):
            bits[..., 16 * h + 4 * s: 16 * h + 4 * s + 4] = (hb4 >> np.uint8(2 * s + h)) & 1
    return np.packbits(bits, axis=-1, bitorder="little")


def raw_blocks(fmt: str, raw, n: int, k: int) -> np.ndarray:
    """A tensor's raw bytes as (n, nb, block bytes) uint8, checked against its shape."""
    qk, nbytes = RAW[fmt]
    if k % qk:
        raise ValueError(f"{fmt} rows hold whole blocks of {qk} columns; {k} columns")
    raw = np.asarray(raw, np.uint8)
    if raw.size != n * (k // qk) * nbytes:
        raise ValueError(f"{raw.size} bytes for a ({n}, {k}) {fmt} tensor: expected "
                         f"{n * (k // qk) * nbytes}")
    return raw.reshape(n, k // qk, nbytes)


def pack(fmt: str, raw, n: int, k: int):
    """(wp, wsp): the packed layout (module docstring) of a GGUF tensor of type `fmt` with n
    rows of k columns, from its raw bytes (any shape holding them in order)."""
    blocks = raw_blocks(fmt, raw, n, k)
    geo = GEOMETRY[fmt]
    g, nb = (n + ROWS - 1) // ROWS, blocks.shape[1]
    full = np.zeros((g * ROWS, nb, blocks.shape[2]), np.uint8)
    full[:n] = blocks
    wp = weight_empty((g, nb, geo.block_bytes), np.uint8)
    wsp = weight_empty((g, nb, ROWS * geo.scales), np.uint16)
    at = 0
    for _name, size, (kind, off) in _FIELDS[fmt]:
        f = full[:, :, at:at + size]
        at += size
        if kind == "wsp":
            v = np.ascontiguousarray(f).view(np.uint16)[..., 0]  # (G*16, nb)
            wsp[:, :, ROWS * off:ROWS * off + ROWS] = v.reshape(g, ROWS, nb).transpose(0, 2, 1)
            continue
        if kind == "k4":
            f, kind = _k4_unpack(f), "rows"
        elif kind == "hbits":
            f, kind = _hbits_spread(f), "codes"
        width = f.shape[2]
        if kind == "codes":  # [t][r][i] = byte 4 t + i of row r
            v = f.reshape(g, ROWS, nb, width // 4, 4).transpose(0, 2, 3, 1, 4)
        else:  # rows: [u][r] = value u of row r
            v = f.reshape(g, ROWS, nb, width).transpose(0, 2, 3, 1)
        wp[:, :, off:off + ROWS * width] = v.reshape(g, nb, ROWS * width)
    bad = (wsp & 0x7C00) == 0x7C00  # fp16 exponent all ones: inf or NaN
    if bad.any():
        raise ScaleRangeError(f"{int(bad.sum())} block scale(s) are NaN or infinite")
    return wp, wsp


def unpack(fmt: str, wp, wsp, n: int) -> np.ndarray:
    """The raw GGUF blocks (n, nb, block bytes) of a packed matrix: the inverse of pack."""
    g, nb = wp.shape[0], wp.shape[1]
    out = np.empty((g * ROWS, nb, RAW[fmt][1]), np.uint8)
    at = 0
    for _name, size, (kind, off) in _FIELDS[fmt]:
        if kind == "wsp":
            v = np.asarray(wsp)[:, :, ROWS * off:ROWS * off + ROWS].transpose(0, 2, 1)
            out[:, :, at:at + 2] = np.ascontiguousarray(v.reshape(g * ROWS, nb, 1)).view(
                np.uint8)
        else:
            width = {"k4": 16, "hbits": 4}.get(kind, size)
            v = np.asarray(wp)[:, :, off:off + ROWS * width]
            if kind in ("codes", "hbits"):
                v = v.reshape(g, nb, width // 4, ROWS, 4).transpose(0, 3, 1, 2, 4)
            else:
                v = v.reshape(g, nb, width, ROWS).transpose(0, 3, 1, 2)
            v = v.reshape(g * ROWS, nb, width)
            out[:, :, at:at + size] = (_k4_pack(v) if kind == "k4" else
                                       _hbits_gather(v) if kind == "hbits" else v)
        at += size
    return out[:n]


def dequantize(fmt: str, blocks) -> np.ndarray:
    """float32 (n, nb * qk) weights of raw blocks (n, nb, block bytes), bit for bit as
    gguf-py's dequantize (same float32 operations in the same order)."""
    blocks = np.asarray(blocks, np.uint8)
    n, nb, _ = blocks.shape
    qk = RAW[fmt][0]
    fields, at = {}, 0
    for name, size, _where in _FIELDS[fmt]:
        fields[name] = blocks[:, :, at:at + size]
        at += size

    def f16(name):
        return np.ascontiguousarray(fields[name]).view(np.float16)[..., 0:1].astype(np.float32)

    if qk == 32:
        qs = fields["qs"]
        q = np.concatenate([qs & 15, qs >> 4], axis=-1)  # columns j, j + 16
        if "qh" in fields:
            bits = np.unpackbits(fields["qh"], axis=-1, bitorder="little")
            q = q | (bits << 4)
        if "m" in fields:
            w = f16("d") * q.astype(np.float32) + f16("m")
        else:  # Q5_0
            w = f16("d") * (q.astype(np.int8) - np.int8(16)).astype(np.float32)
        return w.reshape(n, nb * qk)
    if fmt in ("q4_k", "q5_k"):
        v = _k4_unpack(fields["scales"])
        d = (f16("d") * v[..., :8].astype(np.float32))[..., None]        # (n, nb, 8, 1)
        dm = (f16("dmin") * v[..., 8:].astype(np.float32))[..., None]
        qs = fields["qs"].reshape(n, nb, 4, 1, 32)
        q = np.concatenate([qs & 15, qs >> 4], axis=3).reshape(n, nb, 8, 32)
        if fmt == "q5_k":
            qh = fields["qh"].reshape(n, nb, 1, 32) >> np.arange(8, dtype=np.uint8)[:, None]
            q = q | ((qh & 1) << 4)
        return (d * q.astype(np.float32) - dm).reshape(n, nb * qk)
    # q6_k
    d = (f16("d") * np.ascontiguousarray(fields["scales"]).view(np.int8).astype(
        np.float32)).reshape(n, nb, 16, 1)
    ql = fields["ql"].reshape(n, nb, 2, 1, 64) >> np.array([0, 4], np.uint8)[:, None]
    ql = (ql & 15).reshape(n, nb, 2, 4, 32)
    qh = fields["qh"].reshape(n, nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]
    qh = (qh & 3).reshape(n, nb, 2, 4, 32)
    q = ((ql | (qh << 4)).astype(np.int8) - np.int8(32)).reshape(n, nb, 16, 16)
    return (d * q.astype(np.float32)).reshape(n, nb * qk)
