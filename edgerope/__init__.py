"""edgerope: decoder-only language models on CPUs, fast.

    import edgerope
    m = edgerope.load("path/to/hf-model-dir", dtype="int8")
    for piece in m.generate("Once upon a time", max_tokens=32, temperature=0):
        print(piece, end="")
"""
from edgerope.errors import ConfigError, ContextFullError, EdgeropeError, EdgeropeWarning, WeightsError
from edgerope.kernels import set_threads, get_threads
from edgerope.io.loading import load
from edgerope.engine.model import Model, Session

__version__ = "0.1.0"
__all__ = ["load", "Model", "Session", "set_threads", "get_threads", "EdgeropeError",
           "ConfigError", "WeightsError", "ContextFullError", "EdgeropeWarning", "__version__"]
