"""Weight formats as data: block layouts of Q8_0 / Q4_0 (quantize, pack, unpack with numpy)
and `Linear`, a matrix held in one of them with its matmul (edgerope.kernels).

Here, without numba: the formats' names, the bytes a matrix takes in each (`matrix_nbytes`,
what Linear.nbytes reports once built) and `MatrixSpec`, a matrix known by shape and format
only (what a file's header tells; edgerope info plans a model with it).
"""
from __future__ import annotations

from edgerope.kernels.layout import packed_nbytes

DTYPES = ("int8", "int4", "float32")  # weight formats in memory (edgerope.formats.linear)
_PACKED = {"int8": "q8", "int4": "q4"}  # their packed block layouts (edgerope.kernels.layout)


def matrix_nbytes(dtype: str, n: int, k: int) -> int:
    """Bytes of an (n, k) weight matrix held as `dtype`, bias aside."""
    if dtype == "float32":
        return 4 * int(n) * int(k)
    if dtype not in _PACKED:
        raise ValueError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
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

    @classmethod
    def concat(cls, parts: list[MatrixSpec]) -> MatrixSpec:
        """As Linear.concat: outputs stacked; mixed formats become int8 (float32 if no part
        is int8)."""
        kinds = {p.dtype for p in parts}
        dtype = parts[0].dtype if len(kinds) == 1 else "int8" if "int8" in kinds else "float32"
        return cls(sum(p.out_features for p in parts), parts[0].in_features, dtype,
                   any(p.has_bias for p in parts))
