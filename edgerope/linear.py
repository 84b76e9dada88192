"""Weight matrices and the one linear layer: y = x Wᵀ (+ b).

A weight W (N outputs, K inputs) is held in one of two formats:

- ``float32``: ``w`` (N, K) float32 — the exactness path.
- ``int8``: the Q8_0 block layout. ``wq`` (N, K) int8 and ``ws`` (N, ceil(K/32)) float32;
  block b of row n covers columns [32b, min(32b+32, K)) and W[n, c] = wq[n, c] * ws[n, c // 32].
  Symmetric, one scale per 32 inputs, so a GGUF Q8_0 tensor maps onto it without loss
  (its float16 scales are exact in float32).

Quantization reads the source in row chunks, so a float32 copy of a large tensor (or of the
whole model) never exists at once. Owns: the formats, quantize/concatenate/dequantize, matmul
dispatch (GEMV for one row, GEMM for a batch). Kernels themselves live in edgerope.kernels.
"""
from __future__ import annotations

import numpy as np

from . import kernels as K

BLOCK = 32
DTYPES = ("int8", "float32")
_CHUNK_ROWS = 4096


class Linear:
    """A weight matrix in float32 or int8 blocks, with an optional float32 bias."""

    __slots__ = ("w", "wq", "ws", "bias", "out_features", "in_features")

    def __init__(self, *, w=None, wq=None, ws=None, bias=None):
        self.w, self.wq, self.ws = w, wq, ws
        ref = w if w is not None else wq
        self.out_features, self.in_features = ref.shape
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)

    @property
    def dtype(self) -> str:
        return "float32" if self.w is not None else "int8"

    @property
    def nbytes(self) -> int:
        arrays = (self.w,) if self.w is not None else (self.wq, self.ws)
        return sum(a.nbytes for a in arrays) + (0 if self.bias is None else self.bias.nbytes)

    @classmethod
    def from_float(cls, src, dtype: str, bias=None, convert=None) -> "Linear":
        """Build from a (N, K) source (e.g. a memory-mapped checkpoint view).

        `convert(rows) -> float32 array` turns a slice of `src` into float32 (bfloat16/float16
        sources); it is applied one chunk of rows at a time.
        """
        convert = convert or (lambda a: a)
        n, k = src.shape
        if dtype == "float32":
            w = np.empty((n, k), np.float32)
            for r in range(0, n, _CHUNK_ROWS):
                w[r:r + _CHUNK_ROWS] = convert(src[r:r + _CHUNK_ROWS])
            return cls(w=w, bias=bias)
        if dtype != "int8":
            raise ValueError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
        wq = np.empty((n, k), np.int8)
        ws = np.empty((n, -(-k // BLOCK)), np.float32)
        for r in range(0, n, _CHUNK_ROWS):
            rows = np.ascontiguousarray(convert(src[r:r + _CHUNK_ROWS]), dtype=np.float32)
            K.quantize_q8(wq[r:r + _CHUNK_ROWS], ws[r:r + _CHUNK_ROWS], rows)
        return cls(wq=wq, ws=ws, bias=bias)

    @classmethod
    def concat(cls, parts: list["Linear"]) -> "Linear":
        """Stack the outputs of several matrices with the same inputs (q|k|v, gate|up): one
        matmul and one parallel region instead of several."""
        bias = None
        if any(p.bias is not None for p in parts):
            bias = np.concatenate([p.bias if p.bias is not None else
                                   np.zeros(p.out_features, np.float32) for p in parts])
        if parts[0].w is not None:
            return cls(w=np.concatenate([p.w for p in parts]), bias=bias)
        return cls(wq=np.concatenate([p.wq for p in parts]),
                   ws=np.concatenate([p.ws for p in parts]), bias=bias)

    def dequantize(self) -> np.ndarray:
        if self.w is not None:
            return np.asarray(self.w)
        out = np.empty((self.out_features, self.in_features), np.float32)
        K.dequantize_q8(out, self.wq, self.ws)
        return out

    def __call__(self, out: np.ndarray, x: np.ndarray) -> None:
        """out (T, N) = x (T, K) Wᵀ + b; GEMV when T == 1."""
        if x.shape[0] == 1:
            if self.w is not None:
                K.f32_gemv(out[0], x[0], self.w)
            else:
                K.q8_gemv(out[0], x[0], self.wq, self.ws)
        elif self.w is not None:
            K.f32_gemm(out, x, self.w)
        else:
            K.q8_gemm(out, x, self.wq, self.ws)
        if self.bias is not None:
            K.add_bias(out, self.bias)

    def embed(self, out: np.ndarray, ids: np.ndarray, scale: float) -> None:
        """Rows `ids` of the matrix (an embedding table), times `scale`."""
        if self.w is not None:
            K.f32_embed(out, ids, self.w, scale)
        else:
            K.q8_embed(out, ids, self.wq, self.ws, scale)
