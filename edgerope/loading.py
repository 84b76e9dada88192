"""`edgerope.load(path)`: a model directory (config.json + safetensors + tokenizer) -> Model.

Owns: deciding what a path is and assembling config, weights and tokenizer. Formats are read
by their own modules (safetensors_mmap, checkpoint; GGUF later).
"""
from __future__ import annotations

import os

from .checkpoint import load_weights
from .config import load_config
from .errors import EdgeropeError, WeightsError
from .linear import DTYPES
from .model import Model
from .safetensors_mmap import Checkpoint


def load(path: str, dtype: str = "int8", tokenizer: bool = True) -> Model:
    """Load a Hugging Face model directory. dtype: "int8" (Q8_0-style blocks) or "float32"."""
    if dtype not in DTYPES:
        raise EdgeropeError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        raise WeightsError(f"{path}: expected a model directory (config.json + *.safetensors)")
    cfg = load_config(path)
    weights = load_weights(Checkpoint(path), cfg, dtype)
    tok = None
    # Without a tokenizer file, logits() still works and generate() reports the absence; a
    # tokenizer file that is present but broken is an error.
    if tokenizer and os.path.exists(os.path.join(path, "tokenizer.model")):
        from .tokenizer import load_tokenizer
        tok = load_tokenizer(path)
    return Model(cfg, weights, tok, dtype=dtype, path=path)
