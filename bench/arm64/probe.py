"""What the emulated run really is: machine, CPU features seen by the process, LLVM target and
the SIMD path edgerope picked. Fails (exit 1) if anything x86 shows up.

Run inside the emulation by run.sh; prints `key: value` lines, the last one `MODES: ...`
(edgerope.kernels.simd.available(), best first), which run.sh reads to test each mode.
"""
import ctypes
import os
import platform
import sys

import llvmlite
import llvmlite.binding as llb
import numba
import numpy as np

from edgerope.kernels import simd

AT_HWCAP = 16
# arch/arm64/include/uapi/asm/hwcap.h
HWCAP_BITS = {"fp": 0, "asimd": 1, "aes": 3, "pmull": 4, "sha1": 5, "sha2": 6, "crc32": 7,
              "atomics": 8, "fphp": 9, "asimdhp": 10, "cpuid": 11, "asimdrdm": 12,
              "lrcpc": 15, "dcpop": 16, "asimddp": 20, "sve": 22}
X86_MODES = {"vnni", "avxvnni"}


def hwcaps():
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    bits = libc.getauxval(AT_HWCAP)
    return [n for n, b in HWCAP_BITS.items() if bits >> b & 1]


def main():
    want_cpu = os.environ.get("EDGEROPE_ARM64_PROFILE_CPU", "")
    caps = hwcaps()
    lines = [
        ("python", (f"{platform.python_implementation()} {platform.python_version()} "
                    f"({sys.executable})")),
        ("platform.machine", platform.machine()),
        ("kernel hwcaps (AT_HWCAP)", " ".join(caps)),
        ("dot product (asimddp/sdot)", "yes" if "asimddp" in caps else "no"),
        ("numpy / numba / llvmlite",
         f"{np.__version__} / {numba.__version__} / {llvmlite.__version__}"),
        ("llvmlite process triple", llb.get_process_triple()),
        ("llvm host cpu name", llb.get_host_cpu_name()),
        ("NUMBA_CPU_NAME", str(numba.config.CPU_NAME)),
        ("simd.MODE", simd.MODE),
        ("simd.FEATURES", " ".join(sorted(simd.FEATURES)) or "(none: named generic target)"),
        ("simd.HAS_F16_CONVERT", str(simd.HAS_F16_CONVERT)),
        ("simd.HAS_SDOT", str(getattr(simd, "HAS_SDOT", "(no sdot path in this edgerope)"))),
        ("simd.HAS_FMA", str(simd.HAS_FMA)),
        ("simd.FLOAT_TILE", str(simd.FLOAT_TILE)),
    ]
    for k, v in lines:
        print(f"{k}: {v}")
    problems = []
    if platform.machine() != "aarch64" or not llb.get_process_triple().startswith("aarch64"):
        problems.append("not an aarch64 process")
    if simd.MODE in X86_MODES or X86_MODES & set(simd.available()):
        problems.append(f"x86 SIMD mode selectable here: {simd.available()}")
    if want_cpu == "cortex-a72" and "asimddp" in caps:
        problems.append("cortex-a72 profile but the CPU reports dot-product instructions")
    if want_cpu == "cortex-a76" and "asimddp" not in caps:
        problems.append("cortex-a76 profile but the CPU lacks dot-product instructions")
    if "sdot" in simd.available() and "asimddp" not in caps:
        problems.append("sdot offered on a CPU without dot-product instructions")
    if want_cpu == "cortex-a76" and getattr(simd, "HAS_SDOT", None) is False:
        problems.append("edgerope has an sdot path but did not enable it on a cortex-a76")
    for p in problems:
        print(f"PROBLEM: {p}")
    print("MODES: " + " ".join(simd.available()))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
