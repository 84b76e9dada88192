"""Weight memory (edgerope.formats.pages): aligned, disjoint arrays carved from huge-page maps,
maps released with their last array, and huge pages actually given where the kernel offers
them (Linux THP "always" or "madvise")."""
import gc
import os

import numpy as np
import pytest

from edgerope.formats import pages
from edgerope.formats.pages import CHUNK, huge_page_size, weight_empty


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")]


def test_arrays_are_aligned_disjoint_and_writable():
    shapes = [(3, 5, 34), (16,), (1000, 7), (0, 4), (CHUNK // 4 + 1,)]
    arrays = [weight_empty(s, np.uint16 if i % 2 else np.uint8) for i, s in enumerate(shapes)]
    for i, (a, s) in enumerate(zip(arrays, shapes)):
        assert a.shape == s and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0 or a.size == 0
        a[...] = i + 1
    for i, a in enumerate(arrays):
        assert (a == i + 1).all()  # no array wrote over another


def test_big_arrays_start_on_a_huge_page():
    a = weight_empty((CHUNK // 4 + 100,), np.uint8)
    assert a.ctypes.data % huge_page_size() == 0


def test_a_map_is_released_with_its_last_array():
    pages._carving = None
    a = weight_empty((1000,), np.uint8)
    ref = pages._carving[0]
    assert ref() is not None
    b = weight_empty((1000,), np.uint8)  # the same map
    assert b.ctypes.data == a.ctypes.data + 1024
    del a, b
    gc.collect()
    assert ref() is None  # nothing keeps the map: it was unmapped
    c = weight_empty((10,), np.uint8)  # a new one
    assert pages._carving[0]() is not None and c.size == 10


@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"),
                    reason="this kernel gives no transparent huge pages")
def test_weights_sit_on_huge_pages():
    """A touched 8 MiB of weights is mapped by huge pages (smaps AnonHugePages)."""
    a = weight_empty((8 << 20,), np.uint8)
    a[::4096] = 1
    lo, hi = a.ctypes.data, a.ctypes.data + a.nbytes
    huge = 0
    with open(f"/proc/{os.getpid()}/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= lo and hi <= end
            elif inside and head == "AnonHugePages:":
                huge = int(line.split()[1]) << 10
    assert huge >= 4 * huge_page_size() or huge >= 4 << 20
