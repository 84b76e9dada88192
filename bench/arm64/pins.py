"""Host side: the aarch64 requirement lines, pinned to the versions installed on this host.

Usage: python bench/arm64/pins.py {runtime|torch}

runtime: what edgerope and its kernel/parity tests import (setup.cfg's install_requires,
pytest, hypothesis, transformers), each pinned to the host's version so the emulated run
tests the same numpy/numba/llvmlite as the host; a package missing on the host gets the
fallback pin below. torch: the aarch64 torch wheel (installed separately, --no-deps), with
its pure-Python dependencies.

torch is not the host's version: PyPI's aarch64 wheels of torch 2.11 and later are CUDA
builds (400+ MB, needing nvidia-* / cuda-toolkit wheels); 2.10.0 is the newest CPU-only one.
"""
import importlib.metadata as md
import sys

RUNTIME = {  # name -> fallback version when the host lacks it
    "numpy": "2.4.6", "numba": "0.68.1", "llvmlite": "0.50.0", "safetensors": "0.8.0",
    "sentencepiece": "0.2.3", "click": "8.5.1", "gguf": "0.19.0", "tokenizers": "0.23.3",
    "jinja2": "3.1.6", "tqdm": "4.70.1", "pytest": "9.0.3", "hypothesis": "6.155.2",
    "transformers": "5.23.0",
}
TORCH = "2.10.0"
TORCH_DEPS = ["filelock", "typing-extensions", "sympy", "networkx", "fsspec", "mpmath"]


def host_version(name, fallback):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return fallback


def main(which):
    if which == "runtime":
        for name, fallback in RUNTIME.items():
            print(f"{name}=={host_version(name, fallback)}")
    elif which == "torch":
        print(f"torch=={TORCH}")
    elif which == "torch-deps":
        for name in TORCH_DEPS:
            v = host_version(name, None)
            print(f"{name}=={v}" if v else name)
    else:
        raise SystemExit(f"unknown list {which!r}: runtime, torch or torch-deps")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runtime")
