"""What the machine offers: physical (performance) cores and available memory.

Both read Linux's sysfs / procfs under a `root` (default "/"), so tests can point them at a
fake tree; elsewhere they fall back to what Python knows (os.cpu_count(), no memory figure).
"""
from __future__ import annotations

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


def cpu_model(root: str = "/") -> str:
    """The CPU's model name from /proc/cpuinfo ("model name"; AArch64: "Model" or
    "CPU part"), else the machine type."""
    for line in (_read(os.path.join(root, "proc", "cpuinfo")) or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "CPU part") and value.strip():
            return value.strip()
    return os.uname().machine


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


def process_memory(pid: str = "self") -> dict:
    """This process's memory from /proc, in bytes: `rss` and `peak_rss` (VmRSS / VmHWM:
    everything resident, file-backed pages included), `anonymous` (Anonymous in
    smaps_rollup: private memory no file backs -- heap, buffers, KV cache, copies -- which the
    kernel can only swap, never drop) and `file` (rss - anonymous: library code and
    memory-mapped weights, clean pages the kernel reclaims first under pressure and reads
    back on use). Keys are missing where /proc does not say (not Linux)."""
    out = {}
    status = _read(f"/proc/{pid}/status") or ""
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon") and rest.split():
            out[{"VmRSS": "rss", "VmHWM": "peak_rss", "RssAnon": "_rss_anon"}[key]] = \
                int(rest.split()[0]) * 1024
    rollup = _read(f"/proc/{pid}/smaps_rollup") or ""
    for line in rollup.splitlines():
        if line.startswith("Anonymous:") and len(line.split()) > 1:
            out["anonymous"] = int(line.split()[1]) * 1024
    anon = out.pop("_rss_anon", None)
    if "anonymous" not in out and anon is not None:
        out["anonymous"] = anon  # kernels without smaps_rollup (before 4.14)
    if "rss" in out and "anonymous" in out:
        out["file"] = max(0, out["rss"] - out["anonymous"])
    return out
