"""Model configuration: a Hugging Face `config.json` becomes one frozen `ModelConfig`.

Architectures differ by data, never by copied forward functions: each supported `model_type`
is an `Arch` of the registry (edgerope.archs: norm kind, residual shape, MLP kind, biases, q/k
norms, fused-tensor layout, the defaults its transformers config class fills in when
`config.json` omits a key, and hooks for config-dependent choices).

Owns: reading config dicts, validation of hyper-parameters, derived sizes. Does not own RoPE
details (edgerope.archs.rope), tensor names or what an architecture is (edgerope.archs).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Mapping

from edgerope import archs
from edgerope.errors import ConfigError
from edgerope.archs.rope import RopeSpec, rope_specs_from_config

# Old or alternative key names -> the Hugging Face name used here.
_ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
            "n_positions": "max_position_embeddings", "n_inner": "intermediate_size",
            "activation_function": "hidden_act", "hidden_activation": "hidden_act",
            "layer_norm_epsilon": "layer_norm_eps", "rms_norm_eps": "norm_eps_rms"}



@dataclass(frozen=True)
class MoESpec:
    """A mixture-of-experts block beside the dense MLP (Gemma 4 26B-A4B): `num_experts`
    gated experts of width `intermediate_size`, `top_k` chosen per token."""
    num_experts: int
    top_k: int
    intermediate_size: int


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
    # Per-layer geometry; left empty, every layer gets the uniform values above. Gemma 4's
    # full-attention layers have their own head size and KV heads, its KV-sharing layers a
    # double-wide MLP.
    layer_head_dims: tuple[int, ...] = ()
    layer_kv_heads: tuple[int, ...] = ()
    layer_ffn: tuple[int, ...] = ()
    # KV sharing: the layer whose cache layer i attends to (i itself: it stores its own keys)
    kv_source: tuple[int, ...] = ()
    k_eq_v: tuple[bool, ...] = ()   # V is the raw K projection (no v_proj)
    rope_layers: tuple[bool, ...] = ()  # False: the layer has no RoPE (SmolLM3's NoPE layers)
    v_norm: bool = False            # scale-less RMSNorm on V (per head)
    layer_scalar: bool = False      # each layer's output stream times a stored scalar
    ple_dim: int = 0                # per-layer input embeddings (Gemma 4 PLE): width per layer
    ple_vocab: int = 0              # rows of the per-layer embedding table
    moe: "MoESpec | None" = None
    pre_norm: bool = True           # False: no norm before attention and MLP (OLMo 2)
    residual_scale: float = 1.0     # sublayer outputs times this before the residual add
    logit_scale: float = 1.0        # logits divided by this (Granite)

    def __post_init__(self):
        n = self.num_hidden_layers
        for name, value in (("layer_head_dims", self.head_dim),
                            ("layer_kv_heads", self.num_key_value_heads),
                            ("layer_ffn", self.intermediate_size),
                            ("k_eq_v", False), ("rope_layers", True)):
            if not getattr(self, name):
                object.__setattr__(self, name, (value,) * n)
        if not self.kv_source:
            object.__setattr__(self, "kv_source", tuple(range(n)))

    # -- derived sizes -------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        """Widest query projection of any layer (buffers are sized by it)."""
        return max(self.num_attention_heads * d for d in self.layer_head_dims)

    @property
    def kv_dim(self) -> int:
        """Widest key projection of any layer."""
        return max(h * d for h, d in zip(self.layer_kv_heads, self.layer_head_dims))

    def q_dim_of(self, layer: int) -> int:
        return self.num_attention_heads * self.layer_head_dims[layer]

    def kv_dim_of(self, layer: int) -> int:
        return self.layer_kv_heads[layer] * self.layer_head_dims[layer]

    def stores_kv(self, layer: int) -> bool:
        """False for a layer that reads another layer's KV cache (KV sharing)."""
        return self.kv_source[layer] == layer

    @property
    def max_ffn(self) -> int:
        return max(self.layer_ffn)

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


def _flag(v, default: bool) -> bool:
    return default if v is None else bool(v)


def _eos_list(v) -> tuple[int, ...]:
    if v is None:
        return ()
    if isinstance(v, int):
        return (v,)
    return tuple(int(x) for x in v)


def parse_config(raw: dict) -> ModelConfig:
    """Turn a config.json dict into a ModelConfig, or raise ConfigError naming the problem."""
    model_type = raw.get("model_type")
    arch = archs.find(model_type) if isinstance(model_type, str) else None
    if arch is not None and model_type in arch.wrappers and isinstance(raw.get("text_config"),
                                                                        dict):
        # a multimodal checkpoint (Gemma 3): the text decoder is all edgerope runs
        raw = {"model_type": arch.model_type, **raw["text_config"],
               **{k: raw[k] for k in ("bos_token_id", "eos_token_id") if k in raw}}
        model_type = arch.model_type
    if arch is None or model_type != arch.model_type or not arch.runnable:
        raise ConfigError(f"unsupported model_type {model_type!r} "
                          f"(supported: {', '.join(archs.model_types())})")
    cfg = dict(arch.defaults)
    cfg.update(raw)
    for old, new in _ALIASES.items():
        if old in raw or (old in cfg and new not in raw):
            cfg[new] = cfg[old]  # the architecture's own key name wins over a generic one
    if arch.prepare is not None:
        arch.prepare(cfg)

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

    flags = arch.flags()
    if arch.adjust is not None:
        arch.adjust(cfg, flags)
    norm = flags["norm"]
    eps = float(cfg.get("norm_eps_rms") if norm.startswith("rms") else cfg.get("layer_norm_eps"))
    act = cfg.get("hidden_act")
    attention_bias = bool(cfg.get("attention_bias", False))

    # Which layers use a sliding window.
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if layer_types is None:
        default = arch.layers(cfg, n_layers, window) if arch.layers is not None else (None, window)
        layer_types, window = default
        if layer_types is None:
            layer_types = ["full_attention"] * n_layers
    if arch.fix_layer_types is not None and isinstance(layer_types, (list, tuple)):
        layer_types = arch.fix_layer_types(layer_types)
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

    if arch.scales is not None:
        attn_scale, embed_scale = arch.scales(cfg, hidden, head_dim)
    else:
        attn_scale, embed_scale = head_dim ** -0.5, 1.0
    extra = {}
    if arch.geometry is not None:
        try:
            extra = arch.geometry(cfg, layer_types, {t: s.head_dim for t, s in rope.items()})
        except ValueError as e:
            raise ConfigError(str(e)) from None
        for h in extra.get("layer_kv_heads", ()):
            if h <= 0 or n_heads % h:
                raise ConfigError(f"num_attention_heads ({n_heads}) is not a multiple of "
                                  f"a layer's key-value heads ({h})")

    return ModelConfig(
        model_type=model_type, vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_kv,
        head_dim=head_dim, max_position_embeddings=max_pos, hidden_act=str(act), norm=norm,
        norm_eps=eps, residual=flags["residual"], shared_norm=flags["shared_norm"],
        sandwich=flags["sandwich"], mlp=flags["mlp"], qk_norm=flags["qk_norm"],
        fused_qkv=flags["fused_qkv"],
        qkv_bias=_flag(flags["qkv_bias"], attention_bias),
        o_bias=_flag(flags["o_bias"], attention_bias),
        mlp_bias=_flag(flags["mlp_bias"], bool(cfg.get("mlp_bias", False))),
        lm_head_bias=flags["lm_head_bias"], pre_norm=flags["pre_norm"],
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings")),
        embed_scale=embed_scale, attn_scale=attn_scale,
        # Gemma 3 carries attn_logit_softcapping but its reference attention never applies it
        # (released configs set it to null); Gemma 2's does.
        attn_softcap=(cfg.get("attn_logit_softcapping") or None) if arch.attn_softcap else None,
        final_softcap=cfg.get("final_logit_softcapping"),
        sliding_window=window, layer_types=layer_types, rope=rope,
        bos_token_id=cfg.get("bos_token_id") if isinstance(cfg.get("bos_token_id"), int) else None,
        eos_token_ids=_eos_list(cfg.get("eos_token_id")),
        residual_scale=float(cfg[arch.residual_scale]) if arch.residual_scale else 1.0,
        logit_scale=float(cfg[arch.logit_scale]) if arch.logit_scale else 1.0,
        **extra,
    )
