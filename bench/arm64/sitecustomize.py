"""Loaded by the emulated aarch64 python (run.sh puts this directory first on PYTHONPATH).

qemu user emulation without binfmt_misc cannot exec an aarch64 ELF file from inside the
emulation, so tests that start `sys.executable` as a subprocess would fail with "Exec format
error". run.sh writes a shell wrapper (host /bin/sh, which the host kernel can run) that starts
the same python under qemu again; point sys.executable at it.
"""
import os
import sys

_wrapper = os.environ.get("EDGEROPE_ARM64_PYTHON")
if _wrapper:
    sys.executable = _wrapper
