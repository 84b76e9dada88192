"""What the machine offers: physical (performance) cores and available memory.

Both read Linux's sysfs / procfs under a `root` (default "/"), so tests can point them at a
fake tree; elsewhere they fall back to what Python knows (os.cpu_count(), no memory figure).
"""
from __future__ import annotations

import functools
import os

# a big.LITTLE core counts as a performance core when its cpu_capacity is at least this
# fraction of the largest (prime and big clusters in, LITTLE ones out)
PERFORMANCE_CAPACITY = 0.75


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def parse_cpu_list(text: str | None) -> set[int]:
    """"0-3,8,10-11" -> {0, 1, 2, 3, 8, 10, 11} (sysfs cpu list format); bad text -> empty."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            a, _, b = part.partition("-")
            out.update(range(int(a), int(b or a) + 1))
        except ValueError:
            return set()
    return out


def physical_cores(root: str = "/", allowed=None) -> int:
    """Physical performance cores this process may run on: SMT siblings count once, and on
    big.LITTLE boards only the big cores count (sysfs `cpu_capacity`; Intel hybrid CPUs: the
    `cpu_core` PMU's CPU list). `allowed`: the CPUs to consider (default: the process's
    affinity, os.sched_getaffinity). Falls back to /proc/cpuinfo's (physical id, core id)
    pairs, then to the number of allowed CPUs, then to os.cpu_count()."""
    cpu_dir = os.path.join(root, "sys", "devices", "system", "cpu")
    if allowed is None:
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            allowed = range(os.cpu_count() or 1)
    allowed = sorted(set(allowed))
    if not allowed:
        return max(1, os.cpu_count() or 1)
    big = parse_cpu_list(_read(os.path.join(root, "sys", "devices", "cpu_core", "cpus")))
    cand = [c for c in allowed if c in big] or allowed
    cores: dict[str, int] = {}  # sibling list (one per physical core) -> its capacity
    for c in cand:
        topo = os.path.join(cpu_dir, f"cpu{c}", "topology")
        sib = _read(os.path.join(topo, "core_cpus_list")) or _read(
            os.path.join(topo, "thread_siblings_list"))
        if not sib:
            cores = {}
            break
        try:
            cap = int(_read(os.path.join(cpu_dir, f"cpu{c}", "cpu_capacity")) or 0)
        except ValueError:
            cap = 0
        cores[sib] = max(cores.get(sib, 0), cap)
    if cores:
        top = max(cores.values())
        if top > 0:
            return max(1, sum(cap >= PERFORMANCE_CAPACITY * top for cap in cores.values()))
        return len(cores)
    pairs = set()
    for block in (_read(os.path.join(root, "proc", "cpuinfo")) or "").split("\n\n"):
        fields = {}
        for line in block.splitlines():
            k, _, v = line.partition(":")
            fields[k.strip()] = v.strip()
        if "core id" in fields and fields.get("processor", "").isdigit() \
                and int(fields["processor"]) in cand:
            pairs.add((fields.get("physical id", "0"), fields["core id"]))
    if pairs:
        return len(pairs)
    return len(cand)


def mem_available(root: str = "/") -> int | None:
    """Bytes of memory available to start a program without swapping: $EDGEROPE_MEM_AVAILABLE
    (bytes; for tests and for telling edgerope what a container may use), else MemAvailable
    from /proc/meminfo; None when unknown (then no check is made)."""
    env = os.environ.get("EDGEROPE_MEM_AVAILABLE")
    if env:
        from edgerope.errors import ConfigError
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"EDGEROPE_MEM_AVAILABLE must be a number of bytes, found "
                              f"{env!r}") from None
        if n < 0:
            raise ConfigError(f"EDGEROPE_MEM_AVAILABLE must be >= 0, found {n}")
        return n
    for line in (_read(os.path.join(root, "proc", "meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            try:
                return int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
            except (IndexError, ValueError):
                return None
    return None


# madvise(2) advice that unmaps pages; a later access maps them again from the file (for a
# private file mapping whose pages were never written, the same bytes). Linux, every arch.
_MADV_DONTNEED = 4


@functools.lru_cache(maxsize=None)
def _libc():
    """The C library (calls keep the GIL: ctypes.PyDLL), or None where it has no madvise."""
    import ctypes
    try:
        lib = ctypes.PyDLL(None)
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        lib.madvise.restype = ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return lib


def _library_mapping(line: str):
    """((start, end), perms, path) of a /proc/<pid>/maps or smaps mapping line naming a
    shared library (".so" / ".so.N") that is not writable; None for any other line."""
    parts = line.split()
    if len(parts) < 6 or "w" in parts[1] or parts[0].endswith(":"):
        return None
    name = os.path.basename(parts[5])
    if not (name.endswith(".so") or ".so." in name):
        return None
    lo, _, hi = parts[0].partition("-")
    try:
        return (int(lo, 16), int(hi, 16)), parts[1], parts[5]
    except ValueError:
        return None


def clean_library_mappings(smaps_text: str) -> dict:
    """{mapping: clean} for the non-writable shared-library mappings of a /proc/<pid>/smaps
    text (mapping = _library_mapping's tuple). Clean: no private or shared dirty page, no
    anonymous (copied) or swapped page, so every resident page holds the file's bytes and
    dropping it loses nothing. Relocated data (RELRO, read-only after relocation) is dirty.
    A clean read-only mapping stays clean: nothing writes it without making it writable."""
    out = {}
    head, dirty = None, 0
    for line in smaps_text.splitlines():
        if line[:1].isupper():                      # "Field:   123 kB"
            if head is not None and line.startswith(("Private_Dirty:", "Shared_Dirty:",
                                                     "Anonymous:", "Swap:")):
                field = line.split()
                dirty += int(field[1]) if len(field) > 1 and field[1].isdigit() else 1
            continue
        if head is not None:
            out[head] = dirty == 0
        head, dirty = _library_mapping(line), 0
    if head is not None:
        out[head] = dirty == 0
    return out


_clean: dict = {}   # clean_library_mappings of this process, read again when libraries load


def drop_clean_library_pages() -> int:
    """Unmap this process's resident pages of shared-library code and read-only data (the
    clean mappings of clean_library_mappings), so they stop counting as its memory: code
    that ran once (a compiler, start-up code) leaves the resident set, code still in use
    maps back on its next access from the page cache. Then hands free malloc memory back to
    the system (glibc's malloc_trim). Returns the bytes of address range advised; 0 where
    /proc/self/maps or madvise is unavailable.

    Cost: one read of /proc/self/maps (~1 ms); smaps (~10-25 ms) only when a library was
    loaded since the last call. Safe with other threads running: a listed mapping is
    read-only and was never written, and stays so (a library being loaded meanwhile keeps
    its relocation targets writable until relocated, so they are never listed; Python never
    unloads a library)."""
    libc = _libc()
    if libc is None:
        return 0
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            mappings = [m for m in map(_library_mapping, f) if m is not None]
        if any(m not in _clean for m in mappings):
            with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
                _clean.update(clean_library_mappings(f.read()))
    except OSError:
        return 0
    n = 0
    for m in mappings:
        if _clean.get(m):
            (lo, hi), _, _ = m
            if libc.madvise(lo, hi - lo, _MADV_DONTNEED) == 0:
                n += hi - lo
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)
    return n
