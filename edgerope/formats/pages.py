"""Memory for packed weights: arrays carved from large anonymous maps aligned to the huge-page
size, with transparent huge pages asked for (madvise MADV_HUGEPAGE).

Decoding streams every weight once a token. On 4 KiB pages that is a TLB miss and a page walk
every 4 KiB, and the hardware prefetchers stop at each page. numpy asks for huge pages only for
arrays of 4 MiB and more, and a malloc'd array rarely starts on a 2 MiB boundary, so a small
model's per-layer matrices (0.4-2 MB each in Gemma 3 270M, 2.4 MB in a 1B model's attention)
stayed on 4 KiB pages: decoding Gemma 3 270M Q4_K_M ran 1.05x and a 1B-class Q4_K_M 1.07x
faster once they were not (bench/RESULTS.md, 2026-12-07).

Weights packed in memory (from a GGUF file, from safetensors, quantized while loading) come
from `weight_empty`; a native file's weights stay mapped from the file (page-cache pages: not
ours to place). Small arrays are carved from CHUNK-byte maps (64-byte aligned, one after the
other); an array over CHUNK / 4 gets a map of its own. A map is unmapped when the last array
carved from it is gone (the allocator keeps only a weak reference to the one it carves from).
Where the platform has no MADV_HUGEPAGE or the kernel's THP setting is "never", the same arrays
sit on ordinary pages. Touching any byte of a huge page makes all of it resident: at most one
partly used huge page per map.

Matrices built only to be copied into another (the parts of a q|k|v or gate|up
concatenation) are made inside `ordinary()`: on malloc'd memory, so their copies leave no dead
bytes in the maps (a carved array's memory is never reused while its map lives).

Owns: where packed weights live. Not: their layout (edgerope.formats.q8 / q4 / ggml_blocks).
"""
from __future__ import annotations

import contextlib
import functools
import mmap
import threading
import weakref

import numpy as np

from edgerope.kernels.layout import aligned_empty

__all__ = ["CHUNK", "huge_page_size", "in_weight_memory", "ordinary", "weight_empty"]

CHUNK = 32 << 20
_ALIGN = 64
_lock = threading.Lock()
_carving = None  # (weak reference to a map's array, its first usable byte, bytes used)
_local = threading.local()
_maps = weakref.WeakValueDictionary()  # id -> the array over each live map


@functools.lru_cache(maxsize=1)
def huge_page_size() -> int:
    """The kernel's transparent huge page size (2 MiB on x86-64 and 4 KiB-page AArch64; 32 MiB
    with 16 KiB pages, as on a Raspberry Pi 5); 2 MiB where it does not say."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            size = int(f.read().strip())
        return size if size > 0 and size & (size - 1) == 0 else 2 << 20
    except (OSError, ValueError):
        return 2 << 20


def _map(nbytes: int):
    """(array over a new private anonymous map, offset of its first huge-page boundary):
    nbytes usable from that offset, huge pages asked for over them."""
    page = huge_page_size()
    m = mmap.mmap(-1, nbytes + page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(m, np.uint8)  # the array keeps the map alive
    _maps[id(raw)] = raw
    start = (-raw.ctypes.data) % page
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        try:
            m.madvise(advice, start, nbytes)
        except OSError:  # no THP in this kernel: ordinary pages
            pass
    return raw, start


def weight_empty(shape, dtype) -> np.ndarray:
    """An uninitialized array for packed weights: 64-byte aligned, on huge pages where the
    system gives them (module docstring)."""
    global _carving
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if getattr(_local, "ordinary", False):
        return aligned_empty(shape, dtype)
    if size == 0:
        return np.empty(shape, dtype)
    with _lock:
        if size > CHUNK // 4:
            raw, start = _map(size)
            out = raw[start:start + size]
        else:
            raw = None if _carving is None else _carving[0]()
            if raw is None or _carving[2] + size > _carving[1] + CHUNK:
                raw, start = _map(CHUNK)
                _carving = (weakref.ref(raw), start, start)
            at = _carving[2]
            out = raw[at:at + size]
            _carving = (_carving[0], _carving[1], -(-(at + size) // _ALIGN) * _ALIGN)
    return out.view(dtype).reshape(shape)


@contextlib.contextmanager
def ordinary():
    """Within (this thread): weight_empty gives ordinary 64-byte aligned memory -- for
    matrices that are copied into weight memory afterwards."""
    before = getattr(_local, "ordinary", False)
    _local.ordinary = True
    try:
        yield
    finally:
        _local.ordinary = before


def in_weight_memory(a: np.ndarray) -> np.ndarray:
    """`a` itself if it was made by weight_empty outside `ordinary()`, else a copy that was."""
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    if _maps.get(id(root)) is root and a.flags.c_contiguous:
        return a
    out = weight_empty(a.shape, a.dtype)
    out[...] = a
    return out
