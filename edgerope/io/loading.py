"""`edgerope.load(path)`: a model directory (config.json + safetensors + tokenizer), an
edgerope directory or a GGUF file -> Model; `plan(path)`: what load would build, from the
headers alone.

Owns: deciding what a path is and assembling config, weights and tokenizer. Formats are read
by their own modules: safetensors and checkpoint (Hugging Face directories), native
(edgerope's own format), gguf_file and gguf (GGUF files); the tokenizer by edgerope.text.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from edgerope.archs.config import ConfigError, ModelConfig, parse_config, read_config_dict
from edgerope.engine.model import Model, default_ctx
from edgerope.engine.weights import ModelWeights
from edgerope.errors import EdgeropeError, TokenizerError, WeightsError
from edgerope.formats import DTYPES
from edgerope.io.checkpoint import HeaderSource, SafetensorsSource, load_weights
from edgerope.io.native import FORMAT, is_native, load_native
from edgerope.io.safetensors import Checkpoint


def load(path: str, dtype: str = "auto", tokenizer: bool = True, mmap: bool = True) -> Model:
    """Load a Hugging Face model directory, an edgerope directory or a GGUF file.

    dtype: "auto" (a GGUF file's own block types, int8 for float weights), "int8" (Q8_0
    blocks), "int4" (Q4_0 blocks) or "float32". mmap: an edgerope directory's weights are
    mapped from its file (zero-copy, shared between processes); False reads them into
    memory on huge pages (edgerope.formats.pages; llama.cpp's --no-mmap): a slower start,
    faster decoding. GGUF files and Hugging Face weights are read (repacked) either way.
    Sets up the run time on first use (edgerope.runtime.setup: progress lines on stderr)."""
    from edgerope import runtime
    runtime.setup()
    dtype = resolve_dtype(path, dtype)
    cfg, weights, tok, raw, release = _assemble(path, dtype, tokenizer, header_only=False,
                                                mmap=mmap)
    model = Model(cfg, weights, tok, dtype=dtype, path=os.fspath(path), config_dict=raw)
    release()  # a GGUF file's tensors are all copied out by now: unmapped
    return model


@dataclass
class ModelPlan:
    """What `load(path, dtype)` would build, known without computing anything: the config,
    the weights (formats.MatrixSpec from a file's header; an edgerope directory's arrays
    memory-mapped, as load maps them) and the tokenizer. `edgerope info` describes it."""
    config: ModelConfig
    weights: ModelWeights
    tokenizer: object
    dtype: str
    path: str

    def default_ctx(self) -> int:
        return default_ctx(self.config)


def plan(path: str, dtype: str = "auto", tokenizer: bool = True) -> ModelPlan:
    """The ModelPlan of a model: no weight read, no kernel loaded. Unused tensors warn as in
    load."""
    dtype = resolve_dtype(path, dtype)
    cfg, weights, tok, _, release = _assemble(path, dtype, tokenizer, header_only=True)
    release()
    return ModelPlan(cfg, weights, tok, dtype, os.fspath(path))


def resolve_dtype(path, dtype: str) -> str:
    """The dtype a model at `path` loads as: "auto" keeps a GGUF file's block types and what
    an edgerope directory holds; float weights (a Hugging Face directory) become int8."""
    if dtype == "auto" and os.path.isdir(path) and not is_native(os.fspath(path)):
        return "int8"
    return dtype


def _assemble(path, dtype: str, tokenizer: bool, header_only: bool, mmap: bool = True):
    """(config, weights, tokenizer or None, config dict, release) of a model path."""
    if dtype not in DTYPES:
        raise EdgeropeError(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPES)})")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file or directory")
    if os.path.isfile(path):
        return _assemble_gguf(path, dtype, tokenizer, header_only)
    raw = read_config_dict(path)
    try:
        cfg = parse_config(raw)
    except ConfigError as e:
        raise ConfigError(f"{os.path.join(path, 'config.json')}: {e}") from None
    ck = Checkpoint(path)  # one header parse decides the format and serves the load
    if FORMAT in ck.metadata:
        weights = load_native(ck, cfg, dtype, mapped=mmap or header_only)
    elif header_only:
        weights = load_weights(HeaderSource(SafetensorsSource(ck)), cfg, dtype)
    else:
        weights = load_weights(ck, cfg, dtype)
    tok = None
    # Without a tokenizer file, logits() still works and generate() reports the absence; a
    # tokenizer file that is present but broken is an error.
    if tokenizer and any(os.path.exists(os.path.join(path, f))
                         for f in ("tokenizer.model", "tokenizer.json")):
        from edgerope.text.tokenizer import load_tokenizer
        tok = load_tokenizer(path)
    return cfg, weights, tok, raw, lambda: None


def _assemble_gguf(path: str, dtype: str, tokenizer: bool, header_only: bool):
    from edgerope.io.gguf import gguf_config_dict, load_gguf
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise WeightsError(f"{path}: not a GGUF file and not a model directory")
    cfg, weights, g = load_gguf(path, dtype, header_only=header_only)
    tok = None
    if tokenizer:
        from edgerope.text.tokenizer import tokenizer_from_gguf
        try:
            tok = tokenizer_from_gguf(g)
        except TokenizerError as e:  # name the file, as every load error does
            msg = str(e)
            raise TokenizerError(msg if path in msg else f"{path}: {msg}") from None
    return cfg, weights, tok, gguf_config_dict(g), g.close
