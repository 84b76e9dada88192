"""GGUF models: llama.cpp metadata -> ModelConfig, GGUF tensors -> edgerope weights.

The metadata is translated into a Hugging Face-style config dict, so one parser
(edgerope.config) and one forward pass serve both formats. What llama.cpp hard-codes rather
than stores is filled in here (Gemma 3: local RoPE base 10000, sliding pattern 6, attention
scale 1/sqrt(head_dim); norm weights stored as 1 + w).

Tensors: Q8_0 becomes edgerope int8 blocks bit for bit (edgerope keeps fp16 scales too; they
pass through float32 exactly); every other type `gguf.quants` can read is dequantized and
requantized to int8 (or kept float32). llama-architecture Q/K rows, permuted by llama.cpp's
converter into the interleaved RoPE layout, are permuted back so every model uses one
(Hugging Face) layout.
"""
from __future__ import annotations

import numpy as np

from .checkpoint import load_weights
from .config import parse_config
from .errors import ConfigError, WeightsError
from .gguf_reader import GGUFFile
from .linear import Linear

_G = "blk.{i}."
# One literal map per format: internal name -> GGUF tensor name (".weight"/".bias" appended).
GGUF_NAMES = {
    "embed": "token_embd", "out_norm": "output_norm", "lm_head": "output",
    "attn_norm": _G + "attn_norm", "wq": _G + "attn_q", "wk": _G + "attn_k", "wv": _G + "attn_v",
    "wo": _G + "attn_output", "q_norm": _G + "attn_q_norm", "k_norm": _G + "attn_k_norm",
    "post_attn_norm": _G + "post_attention_norm", "ffn_norm": _G + "ffn_norm",
    "post_ffn_norm": _G + "post_ffw_norm", "w_gate": _G + "ffn_gate", "w_up": _G + "ffn_up",
    "w_down": _G + "ffn_down",
}
SUPPORTED_ARCHS = ("gemma3", "llama")
_Q8_0, _F32, _F16, _BF16 = 8, 0, 1, 30


def gguf_config_dict(g: GGUFFile) -> dict:
    """A Hugging Face-style config.json dict describing the GGUF model."""
    arch = g.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise ConfigError(f"{g.path}: unsupported GGUF architecture {arch!r} "
                          f"(supported: {', '.join(SUPPORTED_ARCHS)})")

    def need(key):
        v = g.get(f"{arch}.{key}")
        if v is None:
            raise ConfigError(f"{g.path}: metadata key '{arch}.{key}' is missing")
        return v

    n_head = int(need("attention.head_count"))
    hidden = int(need("embedding_length"))
    head_dim = int(g.get(f"{arch}.attention.key_length") or (hidden // max(n_head, 1)))
    tokens = g.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens is not None else g.get(f"{arch}.vocab_size")
    if vocab is None and "token_embd.weight" in g.tensors:
        vocab = g.tensors["token_embd.weight"].shape[0]
    raw = dict(
        vocab_size=vocab, hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")), num_attention_heads=n_head,
        num_key_value_heads=int(g.get(f"{arch}.attention.head_count_kv") or n_head),
        head_dim=head_dim, max_position_embeddings=int(need("context_length")),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in g.tensors,
        bos_token_id=g.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=g.get("tokenizer.ggml.eos_token_id"),
    )
    theta = float(g.get(f"{arch}.rope.freq_base", 10000.0))
    rope = {"rope_type": "default", "rope_theta": theta}
    scaling = g.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling not in ("linear", "yarn"):
            raise ConfigError(f"{g.path}: unsupported GGUF RoPE scaling {scaling!r}")
        rope.update(rope_type=scaling, factor=float(g.get(f"{arch}.rope.scaling.factor", 1.0)))
        ompe = g.get(f"{arch}.rope.scaling.original_context_length")
        if ompe:
            rope["original_max_position_embeddings"] = int(ompe)
    if "rope_freqs.weight" in g.tensors:
        raise ConfigError(f"{g.path}: per-frequency RoPE factors (rope_freqs) are not supported")
    rot = g.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ConfigError(f"{g.path}: partial RoPE ({rot} of {head_dim} channels) is not "
                          f"supported for GGUF architecture {arch!r}")
    if arch == "llama":
        raw.update(model_type="llama", hidden_act="silu", rope_parameters=rope)
    else:  # gemma3
        raw.update(model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
                   query_pre_attn_scalar=head_dim, sliding_window_pattern=6,
                   sliding_window=int(need("attention.sliding_window")),
                   final_logit_softcapping=g.get(f"{arch}.final_logit_softcapping"),
                   rope_parameters={"sliding_attention": {"rope_type": "default",
                                                          "rope_theta": 10000.0},
                                    "full_attention": rope})
    return raw


class GGUFSource:
    """Tensors of a GGUF file with the interface edgerope.checkpoint reads from."""

    def __init__(self, g: GGUFFile, cfg):
        self.g, self.where, self.cfg = g, g.path, cfg
        self.unpermute_qk = g.get("general.architecture") == "llama"

    def __contains__(self, name):
        return name in self.g.tensors

    def shape(self, name):
        return self.g.tensors[name].shape

    def float32(self, name) -> np.ndarray:
        t = self.g.tensors[name]
        if t.ggml_type == _F32:
            return np.array(t.raw(), dtype=np.float32)
        return self._dequantize(t)

    def _dequantize(self, t) -> np.ndarray:
        import gguf
        try:
            out = gguf.quants.dequantize(t.raw(), gguf.GGMLQuantizationType(t.ggml_type))
        except (NotImplementedError, ValueError, KeyError) as e:
            raise WeightsError(f"{self.where}: tensor '{t.name}' of type {t.type_name} cannot "
                               f"be read ({e})") from None
        return np.ascontiguousarray(out, dtype=np.float32).reshape(t.shape)

    def linear(self, name, dtype, bias, perm=None) -> Linear:
        t = self.g.tensors[name]
        if self.unpermute_qk and (name.endswith("attn_q.weight") or name.endswith("attn_k.weight")):
            perm = _unpermute_order(t.shape[0], self.cfg.head_dim)
        if perm is not None and bias is not None:
            bias = bias[perm]
        if t.ggml_type == _Q8_0 and dtype == "int8":
            blocks = t.raw().reshape(t.shape[0], -1, 34)
            if perm is not None:
                blocks = blocks[perm]
            ws = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)
            wq = np.ascontiguousarray(blocks[:, :, 2:].view(np.int8)).reshape(t.shape)
            return Linear(wq=wq, ws=ws, bias=bias)
        w = self.float32(name)
        return Linear.from_float(w if perm is None else w[perm], dtype, bias)


def _unpermute_order(n_rows: int, head_dim: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation: per head, rows stored as (D/2, 2) -> (2, D/2)."""
    return np.arange(n_rows).reshape(-1, head_dim // 2, 2).swapaxes(1, 2).ravel()


def load_gguf(path: str, dtype: str = "int8"):
    """Returns (ModelConfig, ModelWeights, GGUFFile)."""
    g = GGUFFile(path)
    try:
        cfg = parse_config(gguf_config_dict(g))
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(g.path) else f"{g.path}: {msg}") from None
    weights = load_weights(GGUFSource(g, cfg), cfg, dtype, names=GGUF_NAMES,
                           norm_plus_one_stored=cfg.model_type == "gemma3_text")
    return cfg, weights, g
