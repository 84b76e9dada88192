"""edgerope: decoder-only language models on CPUs, fast.

    import edgerope
    m = edgerope.load("path/to/hf-model-dir", dtype="int8")
    for piece in m.generate("Once upon a time", max_tokens=32, temperature=0):
        print(piece, end="")

Importing the package loads nothing heavy and changes nothing in the host process: the public
names below are imported on first use (PEP 562), and Numba's threads and cache are set up by
`load()` / the CLI through edgerope.runtime.
"""
from edgerope.errors import (ConfigError, ContextFullError, EdgeropeError, EdgeropeWarning,
                             WeightsError)

__version__ = "0.1.0"
__all__ = ["load", "Model", "Session", "set_threads", "get_threads", "EdgeropeError",
           "ConfigError", "WeightsError", "ContextFullError", "EdgeropeWarning", "__version__"]

_LAZY = {"load": "edgerope.io.loading", "Model": "edgerope.engine.model",
         "Session": "edgerope.engine.model", "set_threads": "edgerope.runtime",
         "get_threads": "edgerope.runtime"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgerope' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
