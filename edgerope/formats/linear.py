"""Weight matrices and the one linear layer: y = x Wᵀ (+ b).

A weight W (N outputs, K inputs) is held in one of these formats:

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
- ggml's other types as a GGUF file holds them (``q4_1``, ``q5_0``, ``q5_1`` and the
  K-quants ``q4_k``, ``q5_k``, ``q6_k``; `from_ggml`): the file's bytes, packed the same way
  (edgerope.formats.ggml_blocks), never converted. The 32-column types take the Q8_0
  activations; the K-quants take Q8_K activations (one scale per 256 inputs, sums per 16),
  as llama.cpp pairs them.

Quantization reads the source in row chunks, so a float32 copy of a large tensor (or of the
whole model) never exists at once. Owns: the formats, quantize/concatenate/dequantize, matmul
dispatch (GEMV for one row, GEMM for a batch). Kernels themselves live in edgerope.kernels.
"""
from __future__ import annotations

import numpy as np

from edgerope import kernels as K
from edgerope.formats import DTYPES, Stack, ggml_blocks, q4, q8, stackable_runs
from edgerope.formats import pages
from edgerope.formats.pages import weight_empty
from edgerope.kernels.layout import GEOMETRY

BLOCK = 32
_CHUNK_ROWS = 4096


class Activations:
    """Quantized-activation buffers (xq, xs, xsum) for up to `rows` tokens, one set per input
    width and kind ("q8_0", "q8_k": edgerope.kernels.layout.act_buffers), created on first
    use and reused: a session owns one, so decoding allocates none (the row views for each
    token count are cached too)."""

    def __init__(self, rows: int):
        self.rows, self._by_k, self._views = rows, {}, {}
        self._scratch = np.empty(0, np.float32)

    def scratch(self, per_token: int, t: int) -> np.ndarray:
        """per_token * t float32 elements a GEMM of t tokens reads besides the activations
        (kernels.gemm_scratch_len: the GEMM cores' prepared activation sums),
        from one buffer sized for `rows` tokens of the largest request, then reused: no
        allocation per matrix call (a one-off larger batch gets its own)."""
        if t > self.rows:
            return np.empty(per_token * t, np.float32)
        if per_token * self.rows > self._scratch.shape[0]:
            self._scratch = np.empty(per_token * self.rows, np.float32)
        return self._scratch[:per_token * t]

    def get(self, k: int, t: int, act: str = "q8_0"):
        key = (k, t, act)
        views = self._views.get(key)
        if views is not None:
            return views
        if t > self.rows:  # a one-off larger batch: not kept
            return K.act_buffers(t, k, act)
        bufs = self._by_k.get((k, act))
        if bufs is None:
            bufs = self._by_k[(k, act)] = K.act_buffers(self.rows, k, act)
        views = self._views[key] = tuple(a[:t] for a in bufs)
        return views

    def quantize(self, x: np.ndarray, act: str = "q8_0"):
        """x (T, K) quantized into the buffers of kind `act`: its (xq, xs, xsum) views."""
        q = self.get(x.shape[1], x.shape[0], act)
        (K.quantize_act_k if act == "q8_k" else K.quantize_act)(*q, x)
        return q

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers made so far."""
        return (sum(K.act_nbytes(self.rows, k, act) for k, act in self._by_k)
                + self._scratch.nbytes)

    @staticmethod
    def nbytes_of(rows: int, widths, acts=("q8_0",), fmts=()) -> int:
        """Bytes of the buffers for `rows` tokens once every input width in `widths` is used
        with each activation kind in `acts` (q8_k only for widths it applies to), and the
        GEMM scratch of the largest such matrix of the packed formats `fmts`."""
        scratch = max((_scratch_per_token(f, k) for f in fmts for k in set(widths)
                       if GEOMETRY[f].qk == 32 or k % 256 == 0), default=0)
        return 4 * rows * scratch + sum(K.act_nbytes(rows, k, a) for k in set(widths)
                                        for a in acts if a == "q8_0" or k % 256 == 0)


def _scratch_per_token(fmt: str, k: int) -> int:
    """float32 elements of GEMM scratch a token of a (., k) matrix of packed format fmt takes
    (kernels.gemm_scratch_len)."""
    return K.gemm_scratch_len(fmt, 1, k)


def check_finite(a: np.ndarray, row0: int = 0) -> None:
    """ScaleRangeError (a ValueError; loaders name the tensor) if `a` holds NaN or inf."""
    bad = ~np.isfinite(a)
    if bad.any():
        where = np.argwhere(bad)[0]
        where[0] += row0
        raise q8.ScaleRangeError(f"{int(bad.sum())} weight(s) are NaN or infinite (first at "
                                 f"index {[int(v) for v in where]})")


class Linear:
    """A weight matrix in float32 or in packed blocks of one format, with an optional
    float32 bias."""

    __slots__ = ("w", "wp", "wsp", "fmt", "bias", "out_features", "in_features")

    def __init__(self, *, w=None, wq=None, ws=None, qs=None, wp=None, wsp=None, shape=None,
                 fmt=None, bias=None):
        """float32 `w`; or int8 as (wq, ws), packed here (ws rounded to fp16; ScaleRangeError
        beyond its range); or int4 as Q4_0 bytes (qs (N, nb, 16), ws) and `shape`, packed
        here; or already packed (wp, wsp uint16 fp16 bits, shape) of layout `fmt` (a
        kernels.layout name; default: int8 when wp's blocks are 512 bytes, int4 when 256)."""
        self.w, self.wp, self.wsp = w, wp, wsp
        if w is not None:
            self.out_features, self.in_features = w.shape
        elif wq is not None:
            self.out_features, self.in_features = wq.shape
            self.wp, self.wsp = q8.pack_q8(wq, ws)
            fmt = "q8"
        else:
            self.out_features, self.in_features = shape
            if qs is not None:
                self.wp, self.wsp = q4.pack_q4(qs, ws)
                fmt = "q4"
        if self.wp is not None:
            if fmt is None:
                fmt = {q8.BLOCK_BYTES: "q8", q4.BLOCK_BYTES: "q4"}.get(self.wp.shape[2])
            geo = GEOMETRY.get(fmt)
            if geo is None or self.wp.shape[2] != geo.block_bytes:
                raise ValueError(f"packed blocks of {self.wp.shape[2]} bytes: not a layout "
                                 f"edgerope knows (format {fmt})")
        self.fmt = fmt
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)

    @classmethod
    def from_ggml(cls, fmt: str, raw, shape, bias=None) -> "Linear":
        """A GGUF tensor of ggml type `fmt` (ggml_blocks.RAW: q4_1 ... q6_k) from its raw
        bytes, kept bit for bit (packed, not converted)."""
        wp, wsp = ggml_blocks.pack(fmt, raw, *shape)
        return cls(wp=wp, wsp=wsp, shape=tuple(shape), fmt=fmt, bias=bias)

    @property
    def dtype(self) -> str:
        """The format: "float32", "int8" (Q8_0), "int4" (Q4_0) or a ggml name ("q4_k" ...)."""
        if self.w is not None:
            return "float32"
        return {"q8": "int8", "q4": "int4"}.get(self.fmt, self.fmt)

    @property
    def act(self) -> str | None:
        """The activations its products read ("q8_0", "q8_k"; None for float32)."""
        return None if self.w is not None else GEOMETRY[self.fmt].act

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
        dtype = "int8" if dtype == "auto" else dtype  # a float source: int8
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
    def concat(cls, parts: list["Linear"]):
        """Stack the outputs of several matrices with the same inputs (q|k|v, gate|up): one
        matmul and one parallel region instead of several. Parts of different formats (a
        GGUF file mixing block types) become a formats.Stack of the runs that do stack
        (formats.stackable_runs)."""
        runs = stackable_runs(parts)
        if len(runs) > 1:
            return Stack([cls.concat(r) if len(r) > 1 else r[0].in_weight_memory()
                          for r in runs])
        bias = None
        if any(p.bias is not None for p in parts):
            bias = np.concatenate([p.bias if p.bias is not None else
                                   np.zeros(p.out_features, np.float32) for p in parts])
        if parts[0].w is not None:
            return cls(w=np.concatenate([p.w for p in parts]), bias=bias)
        shape = (sum(p.out_features for p in parts), parts[0].in_features)
        if parts[0].dtype == "int4":
            blocks = [p.q4() for p in parts]
            return cls(qs=np.concatenate([q for q, _ in blocks]),
                       ws=np.concatenate([s for _, s in blocks]), shape=shape, bias=bias)
        if parts[0].dtype == "int8":
            blocks = [p.q8() for p in parts]
            return cls(wq=np.concatenate([q for q, _ in blocks]),
                       ws=np.concatenate([s for _, s in blocks]), bias=bias)
        # ggml's other types: whole row groups, so the packed arrays simply follow
        wp = weight_empty((sum(p.wp.shape[0] for p in parts),) + parts[0].wp.shape[1:],
                          np.uint8)
        np.concatenate([p.wp for p in parts], out=wp)
        wsp = weight_empty((wp.shape[0],) + parts[0].wsp.shape[1:], parts[0].wsp.dtype)
        np.concatenate([p.wsp for p in parts], out=wsp)
        return cls(wp=wp, wsp=wsp, shape=shape, fmt=parts[0].fmt, bias=bias)

    def in_weight_memory(self) -> "Linear":
        """This matrix with its packed arrays in weight memory (edgerope.formats.pages):
        itself if they are there already, else a copy."""
        if self.wp is None:
            return self
        wp, wsp = pages.in_weight_memory(self.wp), pages.in_weight_memory(self.wsp)
        if wp is self.wp and wsp is self.wsp:
            return self
        return Linear(wp=wp, wsp=wsp, shape=(self.out_features, self.in_features),
                      fmt=self.fmt, bias=self.bias)

    def dequantize(self) -> np.ndarray:
        if self.w is not None:
            return np.asarray(self.w)
        if self.dtype == "int4":
            qs, ws = self.q4()
            return q4.dequantize_q4(qs, ws, self.in_features)
        if self.dtype != "int8":
            raw = ggml_blocks.unpack(self.fmt, self.wp, self.wsp, self.out_features)
            return ggml_blocks.dequantize(self.fmt, raw)
        wq, ws = self.q8()
        out = np.empty((self.out_features, self.in_features), np.float32)
        K.dequantize_q8(out, wq, ws)
        return out

    def __call__(self, out: np.ndarray, x: np.ndarray, acts: Activations | None = None,
                 q=None) -> None:
        """out (T, N) = x (T, K) Wᵀ + b; GEMV when T == 1. `acts`: reusable buffers for the
        quantized activations (packed weights only); `q`: x already quantized as this
        matrix reads it (acts.quantize(x, self.act)), shared by matrices with one input."""
        T = x.shape[0]
        if self.w is not None:
            if T == 1:
                K.f32_gemv(out[0], x[0], self.w)
            else:
                K.f32_gemm(out, x, self.w)
        else:
            gemv, gemm, act = _PRODUCTS.get(self.fmt) or _products(self.fmt)
            acts = acts or Activations(T)
            xq, xs, xsum = q if q is not None else acts.quantize(x, act)
            if T == 1:
                gemv(out[0], xq, xs, xsum, self.wp, self.wsp, self.out_features)
            else:
                n = _scratch_per_token(self.fmt, self.in_features)
                gemm(out, xq, xs, xsum, self.wp, self.wsp, self.out_features,
                     acts.scratch(n, T) if n else None)
        if self.bias is not None:
            K.add_bias(out, self.bias)

    def embed(self, out: np.ndarray, ids: np.ndarray, scale: float) -> None:
        """Rows `ids` of the matrix (an embedding table), times `scale`."""
        if self.w is not None:
            K.f32_embed(out, ids, self.w, scale)
        else:
            K.EMBED[self.fmt](out, ids, self.wp, self.wsp, scale)


_PRODUCTS: dict = {}  # packed layout -> (gemv, gemm, activation kind) of the CPU's SIMD mode


def _products(fmt: str):
    """(gemv, gemm, act) for packed layout `fmt`, looked up once (the kernels load on first
    use, not when this module is imported)."""
    _PRODUCTS[fmt] = K.KERNELS[fmt][K.SIMD_MODE] + (GEOMETRY[fmt].act,)
    return _PRODUCTS[fmt]
