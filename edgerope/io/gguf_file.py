"""A fast, validating GGUF reader: metadata, tensor directory and memory-mapped tensor data.

`gguf.GGUFReader` builds a Python object per array element, which takes ~10 s on a 262k-token
vocabulary; here numeric arrays are single `np.frombuffer` views and string arrays one tight
loop, so opening Gemma 3 270M takes a fraction of a second. Every length, count and offset is
checked against the file size before use, so a hostile file gives a one-line WeightsError
instead of a crash or a read outside the file. Dequantization is left to the `gguf` package
(`gguf.quants.dequantize`), which knows every quant type.

Layout (v2/v3): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv x (key, u32 type, value),
n_tensors x (name, u32 n_dims, u64 dims[n_dims] (fastest first), u32 ggml type, u64 offset),
padding to `general.alignment` (32), tensor data.
"""
from __future__ import annotations

import mmap
import os
import struct

import numpy as np

from edgerope.errors import WeightsError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
       6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 31


class _Field:
    """Compatibility with gguf.GGUFReader's fields: `.contents()` returns the value."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def contents(self):
        v = self.value
        return v.tolist() if isinstance(v, np.ndarray) else v


class GGUFTensor:
    __slots__ = ("name", "ggml_type", "shape", "offset", "nbytes", "_file")

    def __init__(self, name, ggml_type, shape, offset, nbytes, file):
        self.name, self.ggml_type, self.shape = name, ggml_type, shape
        self.offset, self.nbytes, self._file = offset, nbytes, file

    @property
    def type_name(self) -> str:
        import gguf
        try:
            return gguf.GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            return f"type {self.ggml_type}"

    def raw(self) -> np.ndarray:
        """Zero-copy bytes of the tensor, shaped (rows, bytes per row) like gguf-py's `data`
        for quantized types, or typed (rows, cols) for F32/F16/BF16-as-uint16."""
        f = self._file
        buf = np.frombuffer(f._mm, dtype=np.uint8, count=self.nbytes, offset=self.offset)
        rows = int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1
        plain = {0: np.float32, 1: np.float16, 30: np.uint16}.get(self.ggml_type)
        if plain is not None:
            return buf.view(plain).reshape(self.shape)
        return buf.reshape(rows, -1) if len(self.shape) > 1 else buf


class GGUFFile:
    """Metadata (`metadata` dict, `fields` for gguf-py compatibility) and `tensors` by name.
    Shapes are numpy order (slowest first): a (out, in) weight matrix is (out, in)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        try:
            f = open(self.path, "rb")
        except OSError as e:
            raise WeightsError(f"{self.path}: cannot open ({e.strerror})") from None
        with f:
            self.size = os.fstat(f.fileno()).st_size
            if self.size < 24:
                raise WeightsError(f"{self.path}: truncated GGUF file ({self.size} bytes)")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._pos = 0
        if self._bytes(4) != b"GGUF":
            raise WeightsError(f"{self.path}: not a GGUF file (bad magic)")
        self.version = self._scalar("<I")
        if self.version not in (2, 3):
            raise WeightsError(f"{self.path}: unsupported GGUF version {self.version}")
        n_tensors, n_kv = self._scalar("<Q"), self._scalar("<Q")
        if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
            raise WeightsError(f"{self.path}: absurd tensor/metadata counts")
        self.metadata: dict = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar("<I"), key)
        self.fields = {k: _Field(v) for k, v in self.metadata.items()}
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("<I")
            if n_dims > 8:
                raise WeightsError(f"{self.path}: tensor '{name}' has {n_dims} dimensions")
            dims = [self._scalar("<Q") for _ in range(n_dims)]
            infos.append((name, tuple(reversed(dims)), self._scalar("<I"), self._scalar("<Q")))
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise WeightsError(f"{self.path}: bad general.alignment {align!r}")
        data_start = -(-self._pos // align) * align
        self.tensors: dict[str, GGUFTensor] = {}
        spans = []
        for name, shape, ggml_type, off in infos:
            nbytes = _nbytes(ggml_type, shape, self.path, name)
            start = data_start + off
            if off % align or start + nbytes > self.size:
                raise WeightsError(f"{self.path}: tensor '{name}' data [{start}, {start + nbytes}) "
                                   f"lies outside the file ({self.size} bytes) or is misaligned")
            if name in self.tensors:
                raise WeightsError(f"{self.path}: tensor '{name}' appears twice")
            self.tensors[name] = GGUFTensor(name, ggml_type, shape, start, nbytes, self)
            spans.append((start, start + nbytes, name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise WeightsError(f"{self.path}: tensors '{n0}' and '{n1}' overlap")

    def close(self) -> None:
        """Unmap the file once what is needed is copied out (converted weights, the
        vocabulary), so a loaded model keeps no mapping of it. Arrays still viewing it
        (`raw()`) keep the mapping alive until they go; nothing can be read after."""
        mm, self._mm = self._mm, None
        if mm is None:
            return
        try:
            mm.close()
        except BufferError:
            pass  # views remain: unmapped with the last of them

    def get(self, key, default=None):
        return self.metadata.get(key, default)

    # -- parsing helpers, each bounds-checked ------------------------------------------------
    def _bytes(self, n: int) -> bytes:
        if n < 0 or self._pos + n > self.size:
            raise WeightsError(f"{self.path}: truncated or corrupt header (read past the end "
                               f"at byte {self._pos})")
        b = self._mm[self._pos:self._pos + n]
        self._pos += n
        return b

    def _scalar(self, fmt: str):
        return struct.unpack(fmt, self._bytes(struct.calcsize(fmt)))[0]

    def _string(self) -> str:
        n = self._scalar("<Q")
        try:
            return self._bytes(n).decode("utf-8")
        except UnicodeDecodeError:
            raise WeightsError(f"{self.path}: metadata string is not UTF-8 "
                               f"(byte {self._pos - n})") from None

    def _value(self, vtype: int, key: str):
        if vtype in _SCALARS:
            return self._scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype, n = self._scalar("<I"), self._scalar("<Q")
            if n > _MAX_COUNT:
                raise WeightsError(f"{self.path}: metadata '{key}' has {n} elements")
            if etype in _NP:
                dt = np.dtype(_NP[etype])
                arr = np.frombuffer(self._bytes(n * dt.itemsize), dtype=dt)
                return arr
            if etype == _STRING:
                return self._string_array(n, key)
            return [self._value(etype, key) for _ in range(n)]
        raise WeightsError(f"{self.path}: metadata '{key}' has unknown value type {vtype}")

    def _string_array(self, n: int, key: str) -> list[str]:
        mm, pos, size, out = self._mm, self._pos, self.size, []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(n):
            if pos + 8 > size:
                break
            (ln,) = unpack(mm, pos)
            pos += 8
            if pos + ln > size:
                break
            out.append(mm[pos:pos + ln].decode("utf-8", errors="replace"))
            pos += ln
        else:
            self._pos = pos
            return out
        raise WeightsError(f"{self.path}: metadata '{key}' runs past the end of the file")


def _nbytes(ggml_type: int, shape: tuple, path: str, name: str) -> int:
    import gguf
    try:
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise WeightsError(f"{path}: tensor '{name}' has unknown GGML type {ggml_type}") from None
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if shape and shape[-1] % block:
        raise WeightsError(f"{path}: tensor '{name}' row length {shape[-1]} is not a multiple "
                           f"of its block size {block}")
    return n // block * size
