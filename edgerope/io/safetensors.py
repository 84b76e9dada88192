"""Memory-mapped reading of safetensors checkpoints (single file or sharded with an index).

The format is an 8-byte little-endian header length, a JSON header
`{name: {dtype, shape, data_offsets: [begin, end]}}` and the raw data. Reading it directly
(rather than through `safetensors.safe_open`) gives zero-copy numpy views on a memory map and
bfloat16 support without torch. Every offset is validated against the file size before use.

`write_aligned` writes the format with every tensor that needs it 64-byte aligned in the file
(so in the memory map): the header is padded with spaces (allowed by the format) and the
tensors are laid out biggest alignment first, with no holes (the format forbids them).

Owns: file discovery in a model directory, header validation, typed views, float32 conversion,
aligned writing.
Does not own: tensor naming (edgerope.io.checkpoint) or quantization (edgerope.formats.linear).
"""
from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np

from edgerope.errors import WeightsError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64,
           "I8": np.int8, "U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
           "BOOL": np.bool_}
_MAX_HEADER = 100 << 20


_NAMES = {np.dtype(v): k for k, v in _DTYPES.items() if k != "BF16"}
ALIGN = 64


def write_aligned(path: str, tensors: dict, metadata: dict | None = None) -> None:
    """Write numpy arrays as safetensors; the data starts 64-byte aligned and tensors whose
    sizes are multiples of 64 bytes come first, so each of them stays aligned (the rest are
    ordered by element size, keeping their natural alignment)."""
    def key(item):
        a = item[1]
        return (a.nbytes % ALIGN != 0, -a.dtype.itemsize)
    items = sorted(((k, np.ascontiguousarray(v)) for k, v in tensors.items()), key=key)
    header, off = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, a in items:
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, a in items:
            f.write(memoryview(a.reshape(-1).view(np.uint8)))


class SafetensorsFile:
    """One .safetensors file, memory-mapped read-only."""

    def __init__(self, path: str):
        self.path = path
        try:
            f = open(path, "rb")
        except OSError as e:
            raise WeightsError(f"{path}: cannot open ({e.strerror})") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise WeightsError(f"{path}: truncated file ({size} bytes)")
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, _MAX_HEADER):
                raise WeightsError(f"{path}: header length {n} exceeds the file size {size}")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise WeightsError(f"{path}: header is not valid JSON") from None
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size > 0 else None
        if not isinstance(header, dict):
            raise WeightsError(f"{path}: header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self._base = 8 + n
        data_len = size - self._base
        self.entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            try:
                dtype, shape, (b, e) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise WeightsError(f"{path}: tensor '{name}' has a malformed header entry") from None
            if dtype not in _DTYPES:
                raise WeightsError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
            if not all(isinstance(d, int) and d >= 0 for d in shape) or not (
                    isinstance(b, int) and isinstance(e, int)):
                raise WeightsError(f"{path}: tensor '{name}' has a malformed shape or offsets")
            nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(_DTYPES[dtype]).itemsize
            if not 0 <= b <= e <= data_len or e - b != nbytes:
                raise WeightsError(
                    f"{path}: tensor '{name}' offsets [{b}, {e}) do not fit its shape {list(shape)} "
                    f"{dtype} ({nbytes} bytes) inside the data section ({data_len} bytes)")
            self.entries[name] = (dtype, shape, b, e)
            spans.append((b, e, name))
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise WeightsError(f"{path}: tensors '{n0}' and '{n1}' overlap")

    def raw(self, name: str) -> np.ndarray:
        """Zero-copy view in the stored dtype (bfloat16 as uint16)."""
        dtype, shape, b, e = self.entries[name]
        arr = np.frombuffer(self._mm, dtype=_DTYPES[dtype], count=(e - b) // np.dtype(
            _DTYPES[dtype]).itemsize, offset=self._base + b) if e > b else np.zeros(
            0, _DTYPES[dtype])
        return arr.reshape(shape)

    def dtype(self, name: str) -> str:
        return self.entries[name][0]


def to_float32(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 copy (or view for F32) of a raw tensor; bfloat16 arrives as uint16."""
    if dtype == "BF16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    if dtype == "F32":
        return a
    return a.astype(np.float32)


class Checkpoint:
    """All tensors of a model directory: `model.safetensors`, or shards listed by
    `model.safetensors.index.json`, or every *.safetensors file present."""

    def __init__(self, model_dir: str):
        self.dir = model_dir
        index = os.path.join(model_dir, "model.safetensors.index.json")
        if os.path.exists(index):
            try:
                with open(index, encoding="utf-8") as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise WeightsError(f"{index}: not a valid safetensors index") from None
        else:
            files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
        if not files:
            raise WeightsError(f"{model_dir}: no *.safetensors files found")
        self.files = [SafetensorsFile(os.path.join(model_dir, f)) for f in files]
        self._where: dict[str, SafetensorsFile] = {}
        for sf in self.files:
            for name in sf.entries:
                if name in self._where:
                    raise WeightsError(f"{sf.path}: tensor '{name}' also in {self._where[name].path}")
                self._where[name] = sf

    def names(self):
        return self._where.keys()

    def __contains__(self, name):
        return name in self._where

    def _file(self, name) -> SafetensorsFile:
        try:
            return self._where[name]
        except KeyError:
            raise WeightsError(f"{self.dir}: tensor '{name}' is missing") from None

    def shape(self, name) -> tuple[int, ...]:
        return self._file(name).entries[name][1]

    def dtype(self, name) -> str:
        return self._file(name).entries[name][0]

    def raw(self, name) -> np.ndarray:
        return self._file(name).raw(name)

    def float32(self, name) -> np.ndarray:
        sf = self._file(name)
        return to_float32(sf.raw(name), sf.dtype(name))

    @property
    def metadata(self) -> dict:
        return self.files[0].metadata
