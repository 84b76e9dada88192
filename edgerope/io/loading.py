"""`edgerope.load(path)`: a model directory (config.json + safetensors + tokenizer) -> Model.

Owns: deciding what a path is and assembling config, weights and tokenizer. Formats are read
by their own modules (safetensors_mmap, checkpoint; GGUF later).
"""
from __future__ import annotations

import os

from edgerope.io.checkpoint import load_weights
from edgerope.archs.config import ConfigError, parse_config, read_config_dict
from edgerope.errors import EdgeropeError, TokenizerError, WeightsError
from edgerope.formats.linear import DTYPES
from edgerope.engine.model import Model
from edgerope.io.native import FORMAT, load_native
from edgerope.io.safetensors import Checkpoint


def load(path: str, dtype: str = "int8", tokenizer: bool = True) -> Model:
    """Load a Hugging Face model directory or a GGUF file.

    dtype: "int8" (Q8_0-style blocks) or "float32"."""
    if dtype not in DTYPES:
        raise EdgeropeError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file or directory")
    if os.path.isfile(path):
        return _load_gguf(path, dtype, tokenizer)
    raw = read_config_dict(path)
    try:
        cfg = parse_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{os.path.join(path, 'config.json')}: {e}") from None
    ck = Checkpoint(path)  # one header parse decides the format and serves the load
    if FORMAT in ck.metadata:
        weights = load_native(ck, cfg, dtype)
    else:
        weights = load_weights(ck, cfg, dtype)
    tok = None
    # Without a tokenizer file, logits() still works and generate() reports the absence; a
    # tokenizer file that is present but broken is an error.
    if tokenizer and any(os.path.exists(os.path.join(path, f))
                         for f in ("tokenizer.model", "tokenizer.json")):
        from edgerope.text.tokenizer import load_tokenizer
        tok = load_tokenizer(path)
    return Model(cfg, weights, tok, dtype=dtype, path=path, config_dict=raw)


def _load_gguf(path: str, dtype: str, tokenizer: bool) -> Model:
    from edgerope.io.gguf import gguf_config_dict, load_gguf
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise WeightsError(f"{path}: not a GGUF file and not a model directory")
    cfg, weights, g = load_gguf(path, dtype)
    tok = None
    if tokenizer:
        from edgerope.text.tokenizer import tokenizer_from_gguf
        try:
            tok = tokenizer_from_gguf(g)
        except TokenizerError as e:  # name the file, as every load error does
            msg = str(e)
            raise TokenizerError(msg if path in msg else f"{path}: {msg}") from None
    model = Model(cfg, weights, tok, dtype=dtype, path=path, config_dict=gguf_config_dict(g))
    g.release()  # everything is copied out by now
    return model
