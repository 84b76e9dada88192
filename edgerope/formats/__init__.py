"""Weight formats as data: block layouts of Q8_0 / Q4_0 (quantize, pack, unpack with numpy)
and `Linear`, a matrix held in one of them with its matmul (edgerope.kernels).

Here, without numba: the formats' names, the bytes a matrix takes in each (`matrix_nbytes`,
what Linear.nbytes reports once built) and `MatrixSpec`, a matrix known by shape and format
only (what a file's header tells; edgerope info plans a model with it).
"""
from __future__ import annotations

import numpy as np

from edgerope.kernels.layout import ROWS, packed_nbytes

# what a model may be loaded as: "auto" keeps a GGUF file's own block types (int8 for other
# sources); the others convert every matrix (edgerope.formats.linear)
DTYPES = ("auto", "int8", "int4", "float32")
# a matrix's format (Linear.dtype) -> its packed block layout (edgerope.kernels.layout):
# int8 = Q8_0, int4 = Q4_0, and ggml's other types by their own names
_PACKED = {"int8": "q8", "int4": "q4", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1",
           "q4_k": "q4_k", "q5_k": "q5_k", "q6_k": "q6_k"}
FORMATS = ("float32",) + tuple(_PACKED)


def matrix_nbytes(dtype: str, n: int, k: int) -> int:
    """Bytes of an (n, k) weight matrix held as `dtype`, bias aside."""
    if dtype == "float32":
        return 4 * int(n) * int(k)
    if dtype not in _PACKED:
        raise ValueError(f"unsupported format {dtype!r} (supported: {', '.join(FORMATS)})")
    return packed_nbytes(_PACKED[dtype], n, k)


class MatrixSpec:
    """A weight matrix by shape and format, without its numbers: what loading would build
    (`nbytes` equals that Linear's), planned from a file's header."""

    __slots__ = ("out_features", "in_features", "dtype", "has_bias")

    def __init__(self, n: int, k: int, dtype: str, has_bias: bool = False):
        self.out_features, self.in_features = int(n), int(k)
        self.dtype, self.has_bias = dtype, bool(has_bias)

    @property
    def bias(self):
        return True if self.has_bias else None

    @property
    def nbytes(self) -> int:
        return (matrix_nbytes(self.dtype, self.out_features, self.in_features)
                + (4 * self.out_features if self.has_bias else 0))

    def in_weight_memory(self) -> "MatrixSpec":
        return self

    @classmethod
    def concat(cls, parts: list[MatrixSpec]):
        """As Linear.concat: outputs stacked in one matrix of one format, or a Stack of such
        matrices, one per run of parts that `stackable_runs` finds."""
        runs = stackable_runs(parts)
        if len(runs) > 1:
            return Stack([cls.concat(r) if len(r) > 1 else r[0] for r in runs])
        return cls(sum(p.out_features for p in parts), parts[0].in_features, parts[0].dtype,
                   any(p.has_bias for p in parts))


def stackable_runs(parts) -> list[list]:
    """The parts (Linear or MatrixSpec, same inputs) cut into runs that stack into one matrix
    each: consecutive parts of one format where, for ggml's block types (whole groups of 16
    rows packed together), every part but a run's last has whole groups. q|k|v of a GGUF
    file mixing types (Gemma 3 Q4_K_M: Q5_0 | Q5_0 | Q8_0) is then two matrices, not three:
    one parallel region fewer a layer."""
    runs = [[parts[0]]]
    for p in parts[1:]:
        last = runs[-1][-1]
        if p.dtype == last.dtype and (p.dtype in ("float32", "int8", "int4")
                                      or last.out_features % ROWS == 0):
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


class Stack:
    """Matrices with the same inputs whose outputs follow one another, kept in their own
    formats (q|k|v of a GGUF file mixing block types): each part multiplies into its columns
    of the output; the input is quantized once per activation kind the parts read."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.out_features = sum(p.out_features for p in self.parts)
        self.in_features = self.parts[0].in_features
        self.bias = True if any(p.bias is not None for p in self.parts) else None
        kinds = [getattr(p, "act", None) for p in self.parts]
        # (part, its activation kind, first part of that kind: it quantizes the input)
        self._plan = [(p, a, a is not None and a not in kinds[:i])
                      for i, (p, a) in enumerate(zip(self.parts, kinds))]

    @property
    def dtype(self) -> str:
        return "+".join(dict.fromkeys(p.dtype for p in self.parts))

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __call__(self, out, x, acts=None) -> None:
        if acts is None:
            from edgerope.formats.linear import Activations
            acts = Activations(x.shape[0])
        at = 0
        for p, act, first in self._plan:
            q = None
            if act is not None:  # the buffers of that kind hold x once its first part ran
                q = acts.quantize(x, act) if first else acts.get(self.in_features,
                                                                  x.shape[0], act)
            p(out[:, at:at + p.out_features], x, acts, q)
            at += p.out_features

    def dequantize(self):
        return np.concatenate([p.dequantize() for p in self.parts])
