"""Model configuration: a Hugging Face `config.json` becomes one frozen `ModelConfig`.

Architectures differ by data, never by copied forward functions: each supported `model_type`
is a row of `ARCHS` (norm kind, residual shape, MLP kind, biases, q/k norms, fused-tensor layout)
plus the defaults its transformers config class fills in when `config.json` omits a key
(`save_pretrained` writes only values that differ from the class defaults).

Owns: reading config dicts, validation of hyper-parameters, derived sizes. Does not own RoPE
details (edgerope.rope) nor tensor names (edgerope.checkpoint).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Mapping

from .errors import ConfigError
from .rope import RopeSpec, rope_specs_from_config

# Per-architecture data. Keys:
#   norm:        "rms" | "rms1p" (Gemma: x*(1+w)) | "layer" (LayerNorm with bias)
#   residual:    "sequential" | "parallel" (x + attn(n1(x)) + mlp(n?(x)))
#   shared_norm: parallel residual feeds the MLP the attention's normed input (phi, gptj)
#   sandwich:    Gemma's post-attention and pre/post-feed-forward norms
#   mlp:         "gated" (act(gate)*up, down) | "plain" (fc1, act, fc2)
#   qk_norm:     None | "rms" | "rms1p" | "layer" | "layer_per_head" (StableLM: one LN per head)
#   fused_qkv:   None | "per_head" (one fused matrix laid out per head as [q, k, v])
ARCHS: dict[str, dict] = {
    "llama": dict(norm="rms", residual="sequential", mlp="gated", qk_norm=None),
    "mistral": dict(norm="rms", residual="sequential", mlp="gated", qk_norm=None),
    "qwen2": dict(norm="rms", residual="sequential", mlp="gated", qk_norm=None,
                  qkv_bias=True, o_bias=False),
    "qwen3": dict(norm="rms", residual="sequential", mlp="gated", qk_norm="rms"),
    "gemma3_text": dict(norm="rms1p", residual="sequential", mlp="gated", qk_norm="rms1p",
                        sandwich=True),
    "gpt_neox": dict(norm="layer", residual="parallel", mlp="plain", qk_norm=None,
                     fused_qkv="per_head", mlp_bias=True),
    "phi": dict(norm="layer", residual="parallel", shared_norm=True, mlp="plain",
                qkv_bias=True, o_bias=True, mlp_bias=True, lm_head_bias=True),
    "stablelm": dict(norm="layer", residual="sequential", shared_norm=True, mlp="gated",
                     o_bias=False),
    "persimmon": dict(norm="layer", residual="sequential", mlp="plain", qk_norm="layer",
                      fused_qkv="per_head", qkv_bias=True, o_bias=True, mlp_bias=True),
    "gptj": dict(norm="layer", residual="parallel", shared_norm=True, mlp="plain",
                 qkv_bias=False, o_bias=False, mlp_bias=True, lm_head_bias=True),
    "glm": dict(norm="rms", residual="sequential", mlp="gated", qk_norm=None, o_bias=False),
}

# What each transformers config class fills in for a missing key (transformers 5.x).
_DEFAULTS: dict[str, dict] = {
    "llama": dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False, max_position_embeddings=2048),
    "mistral": dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                    sliding_window=4096, max_position_embeddings=131072, num_key_value_heads=8),
    "qwen2": dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28,
                  max_position_embeddings=32768),
    "qwen3": dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False, head_dim=128,
                  attention_bias=False, use_sliding_window=False, sliding_window=4096,
                  max_window_layers=28, max_position_embeddings=32768),
    "gemma3_text": dict(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                        tie_word_embeddings=True, attention_bias=False, sliding_window=4096,
                        head_dim=256, query_pre_attn_scalar=256, final_logit_softcapping=None,
                        attn_logit_softcapping=None, max_position_embeddings=131072,
                        num_key_value_heads=4, sliding_window_pattern=6),
    "gpt_neox": dict(hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False,
                     attention_bias=True, use_parallel_residual=True,
                     max_position_embeddings=2048),
    "phi": dict(hidden_act="gelu_new", layer_norm_eps=1e-5, tie_word_embeddings=False,
                qk_layernorm=False, max_position_embeddings=2048),
    "stablelm": dict(hidden_act="silu", layer_norm_eps=1e-5, tie_word_embeddings=False,
                     use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False,
                     max_position_embeddings=4096),
    "persimmon": dict(hidden_act="relu2", layer_norm_eps=1e-5, tie_word_embeddings=False,
                      qk_layernorm=True, max_position_embeddings=16384),
    "gptj": dict(activation_function="gelu_new", layer_norm_epsilon=1e-5,
                 tie_word_embeddings=False, n_positions=2048, rotary_dim=64),
    "glm": dict(hidden_act="silu", rms_norm_eps=1.5625e-7, tie_word_embeddings=False,
                head_dim=128, attention_bias=True, max_position_embeddings=131072),
}

# Old or alternative key names -> the Hugging Face name used here.
_ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
            "n_positions": "max_position_embeddings", "n_inner": "intermediate_size",
            "activation_function": "hidden_act", "hidden_activation": "hidden_act",
            "layer_norm_epsilon": "layer_norm_eps", "rms_norm_eps": "norm_eps_rms"}

SUPPORTED = tuple(ARCHS) + ("gemma3",)


@dataclass(frozen=True)
class ModelConfig:
    """Everything the engine needs to build and run one model; Hugging Face field names."""
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    hidden_act: str
    norm: str
    norm_eps: float
    residual: str
    shared_norm: bool
    sandwich: bool
    mlp: str
    qk_norm: str | None
    fused_qkv: str | None
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    lm_head_bias: bool
    tie_word_embeddings: bool
    embed_scale: float
    attn_scale: float
    attn_softcap: float | None
    final_softcap: float | None
    sliding_window: int | None
    layer_types: tuple[str, ...]
    rope: Mapping[str, RopeSpec] = field(hash=False, compare=True)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    # -- derived sizes -------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def gqa_ratio(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def window(self, layer: int) -> int | None:
        """Sliding window of `layer` (None = global attention)."""
        return self.sliding_window if self.layer_types[layer] == "sliding_attention" else None

    def rope_for(self, layer: int) -> RopeSpec:
        return self.rope[self.layer_types[layer]]

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        return parse_config(raw)

    @classmethod
    def from_file(cls, path: str) -> "ModelConfig":
        return load_config(path)


def read_config_dict(path: str) -> dict:
    """The raw config.json dict (path: the file or the directory holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no config.json found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return raw


def load_config(path: str) -> ModelConfig:
    """Read and parse `config.json` (or the directory holding it)."""
    raw = read_config_dict(path)
    try:
        return parse_config(raw)
    except ConfigError as e:
        where = os.path.join(path, "config.json") if os.path.isdir(path) else path
        raise ConfigError(f"{where}: {e}") from None


def _get(cfg: dict, key: str, default=None):
    v = cfg.get(key)
    return default if v is None else v


def _positive_int(cfg: dict, key: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ConfigError(f"'{key}' must be a positive integer, found {v!r}")
    return v


def _eos_list(v) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, int):
        return (v,)
    return tuple(int(x) for x in v)


def parse_config(raw: dict) -> ModelConfig:
    """Turn a config.json dict into a ModelConfig, or raise ConfigError naming the problem."""
    model_type = raw.get("model_type")
    if model_type == "gemma3" and isinstance(raw.get("text_config"), dict):
        # Multimodal Gemma 3: the text decoder is all edgerope runs.
        raw = {"model_type": "gemma3_text", **raw["text_config"],
               **{k: raw[k] for k in ("bos_token_id", "eos_token_id") if k in raw}}
        model_type = "gemma3_text"
    if model_type not in ARCHS:
        raise ConfigError(f"unsupported model_type {model_type!r} "
                          f"(supported: {', '.join(SUPPORTED)})")
    arch = ARCHS[model_type]
    cfg = dict(_DEFAULTS[model_type])
    cfg.update(raw)
    for old, new in _ALIASES.items():
        if old in raw or (old in cfg and new not in raw):
            cfg[new] = cfg[old]  # the architecture's own key name wins over a generic one

    hidden = _positive_int(cfg, "hidden_size")
    n_layers = _positive_int(cfg, "num_hidden_layers")
    n_heads = _positive_int(cfg, "num_attention_heads")
    vocab = _positive_int(cfg, "vocab_size")
    if cfg.get("num_key_value_heads") is None:
        cfg["num_key_value_heads"] = n_heads
    n_kv = _positive_int(cfg, "num_key_value_heads")
    if n_heads % n_kv:
        raise ConfigError(f"num_attention_heads ({n_heads}) is not a multiple of "
                          f"num_key_value_heads ({n_kv})")
    if cfg.get("head_dim") is None:
        if hidden % n_heads:
            raise ConfigError(f"hidden_size ({hidden}) is not divisible by "
                              f"num_attention_heads ({n_heads})")
        cfg["head_dim"] = hidden // n_heads
    head_dim = _positive_int(cfg, "head_dim")
    if cfg.get("intermediate_size") is None:
        cfg["intermediate_size"] = 4 * hidden  # GPT-J's n_inner=None
    inter = _positive_int(cfg, "intermediate_size")
    max_pos = _positive_int(cfg, "max_position_embeddings")

    norm = arch["norm"]
    eps = float(cfg.get("norm_eps_rms") if norm.startswith("rms") else cfg.get("layer_norm_eps"))
    act = cfg.get("hidden_act")

    qk_norm = arch.get("qk_norm")
    if model_type in ("phi", "stablelm", "persimmon"):
        if not cfg.get("qk_layernorm"):
            qk_norm = None
        else:
            qk_norm = "layer_per_head" if model_type == "stablelm" else "layer"
    attention_bias = bool(cfg.get("attention_bias", False))
    qkv_bias = arch.get("qkv_bias", attention_bias)
    if model_type == "stablelm":
        qkv_bias = bool(cfg.get("use_qkv_bias"))
    residual = arch["residual"]
    if model_type in ("gpt_neox", "stablelm"):
        residual = "parallel" if cfg.get("use_parallel_residual") else "sequential"

    # Which layers use a sliding window.
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if model_type in ("qwen2", "qwen3") and not cfg.get("use_sliding_window"):
        window = None
    if layer_types is None:
        if model_type == "gemma3_text":
            pat = int(cfg.get("sliding_window_pattern") or 6)
            layer_types = ["sliding_attention" if (i + 1) % pat else "full_attention"
                           for i in range(n_layers)]
        elif model_type in ("qwen2", "qwen3"):
            mwl = int(cfg.get("max_window_layers") or 0)
            layer_types = ["sliding_attention" if window is not None and i >= mwl
                           else "full_attention" for i in range(n_layers)]
        elif model_type == "mistral" and window is not None:
            layer_types = ["sliding_attention"] * n_layers
        else:
            layer_types = ["full_attention"] * n_layers
    layer_types = tuple(layer_types)
    if len(layer_types) != n_layers:
        raise ConfigError(f"layer_types has {len(layer_types)} entries for "
                          f"{n_layers} layers")
    bad = set(layer_types) - {"full_attention", "sliding_attention"}
    if bad:
        raise ConfigError(f"unsupported layer type(s) {sorted(bad)}")
    if "sliding_attention" in layer_types:
        if not isinstance(window, int) or window <= 0:
            raise ConfigError(f"'sliding_window' must be a positive integer, found {window!r}")
    else:
        window = None

    try:
        rope = rope_specs_from_config(raw, model_type, head_dim, list(layer_types))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    missing = set(layer_types) - set(rope)
    if missing:
        raise ConfigError(f"no RoPE parameters for layer type(s) {sorted(missing)}")

    if model_type == "gemma3_text":
        attn_scale = float(cfg["query_pre_attn_scalar"]) ** -0.5
        embed_scale = math.sqrt(hidden)
    else:
        attn_scale = head_dim ** -0.5
        embed_scale = 1.0

    return ModelConfig(
        model_type=model_type, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
        head_dim=head_dim, max_position_embeddings=max_pos, hidden_act=str(act), norm=norm,
        norm_eps=eps, residual=residual, shared_norm=bool(arch.get("shared_norm", False)),
        sandwich=bool(arch.get("sandwich", False)), mlp=arch["mlp"], qk_norm=qk_norm,
        fused_qkv=arch.get("fused_qkv"), qkv_bias=bool(qkv_bias),
        o_bias=bool(arch.get("o_bias", attention_bias)),
        mlp_bias=bool(arch.get("mlp_bias", cfg.get("mlp_bias", False))),
        lm_head_bias=bool(arch.get("lm_head_bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings")),
        embed_scale=embed_scale, attn_scale=attn_scale,
        # Gemma 3 carries attn_logit_softcapping but its reference attention never applies it
        # (released configs set it to null); no other supported architecture has one.
        attn_softcap=None,
        final_softcap=cfg.get("final_logit_softcapping"),
        sliding_window=window, layer_types=layer_types, rope=rope,
        bos_token_id=cfg.get("bos_token_id") if isinstance(cfg.get("bos_token_id"), int) else None,
        eos_token_ids=_eos_list(cfg.get("eos_token_id")),
    )
