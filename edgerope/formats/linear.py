"""Weight matrices and the one linear layer: y = x Wᵀ (+ b).

A weight W (N outputs, K inputs) is held in one of three formats:

- ``float32``: ``w`` (N, K) float32 — the exactness path.
- ``int8``: the Q8_0 block layout. Logically ``wq`` (N, K) int8 and ``ws`` (N, ceil(K/32))
  float32; block b of row n covers columns [32b, min(32b+32, K)) and
  W[n, c] = wq[n, c] * ws[n, c // 32]. Symmetric, one scale per 32 inputs. In memory it is
  held packed for integer dot products (``wp``, ``wsp``: 16 rows interleaved per 32-column
  block, scales rounded to fp16, see edgerope.formats.q8): exactly llama.cpp's Q8_0, 8.5
  bits a weight, so a GGUF Q8_0 tensor maps onto it without loss. Activations are quantized
  to int8 blocks once per matmul input (`Activations`), as llama.cpp does for Q8_0.
- ``int4``: llama.cpp's Q4_0 blocks (one fp16 scale per 32 inputs, 4-bit codes,
  W = (q - 8) * d; 4.5 bits a weight), packed the same way (``wp`` holds two codes a byte,
  see edgerope.formats.q4) and multiplied by the same integer-dot cores. A GGUF Q4_0
  tensor maps onto it bit for bit; float weights are quantized with ggml's Q4_0 rounding.

Quantization reads the source in row chunks, so a float32 copy of a large tensor (or of the
whole model) never exists at once. Owns: the formats, quantize/concatenate/dequantize, matmul
dispatch (GEMV for one row, GEMM for a batch). Kernels themselves live in edgerope.kernels.
"""
from __future__ import annotations

import numpy as np

from edgerope import kernels as K
from edgerope.formats import DTYPES, q4, q8

BLOCK = 32
_CHUNK_ROWS = 4096


class Activations:
    """Quantized-activation buffers (xq, xs, xsum) for up to `rows` tokens, one set per input
    width, created on first use and reused: a session owns one, so decoding allocates none
    (the row views for each token count are cached too)."""

    def __init__(self, rows: int):
        self.rows, self._by_k, self._views = rows, {}, {}

    def get(self, k: int, t: int):
        views = self._views.get((k, t))
        if views is not None:
            return views
        if t > self.rows:  # a one-off larger batch: not kept
            return K.act_buffers(t, k)
        bufs = self._by_k.get(k)
        if bufs is None:
            bufs = self._by_k[k] = K.act_buffers(self.rows, k)
        views = self._views[(k, t)] = tuple(a[:t] for a in bufs)
        return views

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers made so far (nbytes_of for the input widths used)."""
        return self.nbytes_of(self.rows, self._by_k)

    @staticmethod
    def nbytes_of(rows: int, widths) -> int:
        """Bytes of the buffers for `rows` tokens once every input width in `widths` is used."""
        return sum(K.act_nbytes(rows, k) for k in set(widths))


def check_finite(a: np.ndarray, row0: int = 0) -> None:
    """ScaleRangeError (a ValueError; loaders name the tensor) if `a` holds NaN or inf."""
    bad = ~np.isfinite(a)
    if bad.any():
        where = np.argwhere(bad)[0]
        where[0] += row0
        raise q8.ScaleRangeError(f"{int(bad.sum())} weight(s) are NaN or infinite (first at "
                                 f"index {[int(v) for v in where]})")


class Linear:
    """A weight matrix in float32, int8 or int4 blocks, with an optional float32 bias."""

    __slots__ = ("w", "wp", "wsp", "bias", "out_features", "in_features")

    def __init__(self, *, w=None, wq=None, ws=None, qs=None, wp=None, wsp=None, shape=None,
                 bias=None):
        """float32 `w`; or int8 as (wq, ws), packed here (ws rounded to fp16; ScaleRangeError
        beyond its range); or int4 as Q4_0 bytes (qs (N, nb, 16), ws) and `shape`, packed
        here; or already packed (wp, wsp uint16 fp16 bits, shape: int8 when wp's blocks
        are 512 bytes, int4 when 256)."""
        self.w, self.wp, self.wsp = w, wp, wsp
        if w is not None:
            self.out_features, self.in_features = w.shape
        elif wq is not None:
            self.out_features, self.in_features = wq.shape
            self.wp, self.wsp = q8.pack_q8(wq, ws)
        else:
            self.out_features, self.in_features = shape
            if qs is not None:
                self.wp, self.wsp = q4.pack_q4(qs, ws)
        if self.wp is not None and self.wp.shape[2] not in (q4.BLOCK_BYTES,
                                                            q8.BLOCK_BYTES):
            raise ValueError(f"packed blocks of {self.wp.shape[2]} bytes: expected "
                             f"{q8.BLOCK_BYTES} (int8) or {q4.BLOCK_BYTES} (int4)")
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)

    @property
    def dtype(self) -> str:
        if self.w is not None:
            return "float32"
        return "int4" if self.wp.shape[2] == q4.BLOCK_BYTES else "int8"

    @property
    def nbytes(self) -> int:
        arrays = (self.w,) if self.w is not None else (self.wp, self.wsp)
        return sum(a.nbytes for a in arrays) + (0 if self.bias is None else self.bias.nbytes)

    def q8(self):
        """(wq, ws) of an int8 matrix, unpacked (for conversion and tests); ws float32 holding
        the fp16 scales exactly."""
        return q8.unpack_q8(self.wp, self.wsp, self.out_features, self.in_features)

    def q4(self):
        """(qs, ws) of an int4 matrix: Q4_0 bytes (N, nb, 16) and float32 scales (fp16 values)."""
        return q4.unpack_q4(self.wp, self.wsp, self.out_features)

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
                check_finite(w[r:r + _CHUNK_ROWS], r)
            return cls(w=w, bias=bias)
        if dtype == "int4":
            qs = np.empty((n, -(-k // BLOCK), 16), np.uint8)
            ws = np.empty((n, -(-k // BLOCK)), np.float32)
            for r in range(0, n, _CHUNK_ROWS):
                rows = np.ascontiguousarray(convert(src[r:r + _CHUNK_ROWS]), dtype=np.float32)
                check_finite(rows, r)
                qs[r:r + _CHUNK_ROWS], ws[r:r + _CHUNK_ROWS] = q4.quantize_q4(rows)
            return cls(qs=qs, ws=ws, shape=(n, k), bias=bias)
        if dtype != "int8":
            raise ValueError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
        wq = np.empty((n, k), np.int8)
        ws = np.empty((n, -(-k // BLOCK)), np.float32)
        for r in range(0, n, _CHUNK_ROWS):
            rows = np.ascontiguousarray(convert(src[r:r + _CHUNK_ROWS]), dtype=np.float32)
            check_finite(rows, r)
            K.quantize_q8(wq[r:r + _CHUNK_ROWS], ws[r:r + _CHUNK_ROWS], rows)
        return cls(wq=wq, ws=ws, bias=bias)  # packed by the constructor

    @classmethod
    def concat(cls, parts: list["Linear"]) -> "Linear":
        """Stack the outputs of several matrices with the same inputs (q|k|v, gate|up): one
        matmul and one parallel region instead of several."""
        bias = None
        if any(p.bias is not None for p in parts):
            bias = np.concatenate([p.bias if p.bias is not None else
                                   np.zeros(p.out_features, np.float32) for p in parts])
        kinds = {p.dtype for p in parts}
        if len(kinds) > 1:  # e.g. a GGUF mixing Q4_0 and Q8_0 in q|k|v: requantize to one
            dtype = "int8" if "int8" in kinds else "float32"
            parts = [p if p.dtype == dtype else cls.from_float(p.dequantize(), dtype, p.bias)
                     for p in parts]
        if parts[0].w is not None:
            return cls(w=np.concatenate([p.w for p in parts]), bias=bias)
        if parts[0].dtype == "int4":
            q4 = [p.q4() for p in parts]
            return cls(qs=np.concatenate([q for q, _ in q4]),
                       ws=np.concatenate([s for _, s in q4]),
                       shape=(sum(p.out_features for p in parts), parts[0].in_features),
                       bias=bias)
        q8 = [p.q8() for p in parts]
        return cls(wq=np.concatenate([q for q, _ in q8]), ws=np.concatenate([s for _, s in q8]),
                   bias=bias)

    def dequantize(self) -> np.ndarray:
        if self.w is not None:
            return np.asarray(self.w)
        if self.dtype == "int4":
            qs, ws = self.q4()
            return q4.dequantize_q4(qs, ws, self.in_features)
        wq, ws = self.q8()
        out = np.empty((self.out_features, self.in_features), np.float32)
        K.dequantize_q8(out, wq, ws)
        return out

    def __call__(self, out: np.ndarray, x: np.ndarray, acts: Activations | None = None) -> None:
        """out (T, N) = x (T, K) Wᵀ + b; GEMV when T == 1. `acts`: reusable buffers for the
        quantized activations (int8 weights only)."""
        T = x.shape[0]
        if self.w is not None:
            if T == 1:
                K.f32_gemv(out[0], x[0], self.w)
            else:
                K.f32_gemm(out, x, self.w)
        else:
            xq, xs, xsum = (acts or Activations(T)).get(self.in_features, T)
            K.quantize_act(xq, xs, xsum, x)
            gemv, gemm = _PRODUCTS.get(self.wp.shape[2]) or _products(self.wp.shape[2])
            if T == 1:
                gemv(out[0], xq, xs, xsum, self.wp, self.wsp, self.out_features)
            else:
                gemm(out, xq, xs, xsum, self.wp, self.wsp, self.out_features)
        if self.bias is not None:
            K.add_bias(out, self.bias)

    def embed(self, out: np.ndarray, ids: np.ndarray, scale: float) -> None:
        """Rows `ids` of the matrix (an embedding table), times `scale`."""
        if self.w is not None:
            K.f32_embed(out, ids, self.w, scale)
        elif self.wp.shape[2] == q4.BLOCK_BYTES:
            K.q4p_embed(out, ids, self.wp, self.wsp, scale)
        else:
            K.q8p_embed(out, ids, self.wp, self.wsp, scale)


_PRODUCTS: dict = {}  # packed block bytes -> (gemv, gemm) of the CPU's SIMD mode


def _products(block_bytes: int):
    """(gemv, gemm) for packed blocks of `block_bytes`, looked up once (the kernels load on
    first use, not when this module is imported)."""
    fmt = {q8.BLOCK_BYTES: "q8", q4.BLOCK_BYTES: "q4"}[block_bytes]
    _PRODUCTS[block_bytes] = K.KERNELS[fmt][K.SIMD_MODE]
    return _PRODUCTS[block_bytes]
