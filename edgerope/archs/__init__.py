"""The architecture registry: one module per model family, each holding everything edgerope
knows about it as data -- forward-pass flags, the transformers config-class defaults, RoPE
defaults per layer type, Hugging Face tensor names, GGUF metadata and tensor names, and the
built-in chat template for files that carry none. The forward pass (edgerope.engine.model) is one
function steered by that data; archs.config, archs.rope, io.checkpoint, io.gguf and
text.template read the registry instead of naming architectures.

Adding an architecture = one module here that builds an `Arch` and is listed in `_MODULES`,
plus its tests (parity with transformers in tests/tiny_models.py and tests/test_parity.py).
"""
from __future__ import annotations

import importlib

from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES, GGUF_NAMES

__all__ = ["Arch", "GGUFArch", "all_archs", "get", "find", "by_gguf", "model_types", "gguf_archs",
           "LLAMA_NAMES", "GGUF_NAMES"]

_MODULES = ("llama", "qwen", "gemma2", "gemma3", "gemma4", "gpt_neox", "phi", "phi3",
            "stablelm", "persimmon", "gptj", "glm", "granite", "smollm3", "olmo2", "falcon")

_REGISTRY: dict[str, Arch] | None = None


def _registry() -> dict[str, Arch]:
    global _REGISTRY
    if _REGISTRY is None:
        reg: dict[str, Arch] = {}
        for name in _MODULES:
            module = importlib.import_module(f"{__name__}.{name}")
            for arch in module.ARCHS:
                reg[arch.model_type] = arch
        _REGISTRY = reg
    return _REGISTRY


def all_archs(runnable_only: bool = True) -> list[Arch]:
    """Every registered architecture (those edgerope runs, unless runnable_only is False)."""
    return [a for a in _registry().values() if a.runnable or not runnable_only]


def model_types(runnable_only: bool = True) -> tuple[str, ...]:
    """Hugging Face model_types edgerope runs (and the multimodal wrappers it takes the text
    decoder of)."""
    out = []
    for a in _registry().values():
        if a.runnable or not runnable_only:
            out += [a.model_type, *a.wrappers]
    return tuple(out)


def find(model_type: str) -> Arch | None:
    """The Arch of a model_type or of a multimodal wrapper around it, else None."""
    reg = _registry()
    if model_type in reg:
        return reg[model_type]
    for a in reg.values():
        if model_type in a.wrappers:
            return a
    return None


def get(model_type: str) -> Arch:
    a = find(model_type)
    if a is None:
        raise KeyError(model_type)
    return a


def gguf_archs() -> tuple[str, ...]:
    return tuple(a.gguf.name for a in _registry().values() if a.gguf is not None)


def by_gguf(name: str) -> Arch | None:
    """The Arch whose GGUF `general.architecture` is `name`."""
    for a in _registry().values():
        if a.gguf is not None and a.gguf.name == name:
            return a
    return None
