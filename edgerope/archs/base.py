"""`Arch`: what one architecture is, as data plus a few hooks over the config dict."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

_L = "model.layers.{i}."
# Llama-style Hugging Face tensor names (".weight"/".bias" are appended by the loader); most
# families are this map with a few entries changed.
LLAMA_NAMES = {
    "embed": "model.embed_tokens", "out_norm": "model.norm", "lm_head": "lm_head",
    "attn_norm": _L + "input_layernorm", "ffn_norm": _L + "post_attention_layernorm",
    "wq": _L + "self_attn.q_proj", "wk": _L + "self_attn.k_proj", "wv": _L + "self_attn.v_proj",
    "wo": _L + "self_attn.o_proj", "q_norm": _L + "self_attn.q_norm",
    "k_norm": _L + "self_attn.k_norm",
    "w_gate": _L + "mlp.gate_proj", "w_up": _L + "mlp.up_proj", "w_down": _L + "mlp.down_proj",
}

_G = "blk.{i}."
# llama.cpp's tensor names (the same for every architecture it writes).
GGUF_NAMES = {
    "embed": "token_embd", "out_norm": "output_norm", "lm_head": "output",
    "attn_norm": _G + "attn_norm", "wq": _G + "attn_q", "wk": _G + "attn_k", "wv": _G + "attn_v",
    "wo": _G + "attn_output", "q_norm": _G + "attn_q_norm", "k_norm": _G + "attn_k_norm",
    "post_attn_norm": _G + "post_attention_norm", "ffn_norm": _G + "ffn_norm",
    "post_ffn_norm": _G + "post_ffw_norm", "w_gate": _G + "ffn_gate", "w_up": _G + "ffn_up",
    "w_down": _G + "ffn_down",
}


@dataclass(frozen=True)
class GGUFArch:
    """How llama.cpp writes an architecture. `config(meta, raw)` adds the architecture's
    config.json keys to `raw` (the common ones are read by edgerope.io.gguf); `meta` reads
    metadata: `meta.need(key, kind)`, `meta.opt(key, default, kind)` (keys without the
    `<arch>.` prefix) and `meta.rope` (the file's RoPE parameters as a rope_parameters dict)."""
    name: str                                  # general.architecture
    config: Callable[[object, dict], None]
    names: Mapping[str, str] = field(default_factory=lambda: GGUF_NAMES)
    unpermute_qk: bool = False                 # Q/K rows permuted by the converter (llama)
    norm_plus_one_stored: bool = False         # norm weights stored as 1 + w (gemma)
    layer_arrays: bool = False                 # per-layer head_count_kv / feed_forward_length
    rope_freqs: bool = False                   # reads a rope_freqs tensor itself
    config_tensors: tuple = ()                 # tensors the config hook reads (not weights)


@dataclass(frozen=True)
class Arch:
    """One Hugging Face `model_type`.

    Forward-pass shape (edgerope.archs.config.ModelConfig has the meaning of each): `norm` "rms" |
    "rms1p" (x*(1+w)) | "layer"; `residual` "sequential" | "parallel"; `shared_norm` (parallel
    residual feeds the MLP the attention's normed input); `sandwich` (post-attention and
    pre/post-feed-forward norms); `pre_norm` (False: none before attention and MLP, OLMo 2);
    `mlp` "gated" | "plain"; `qk_norm` None | "rms" | "rms1p" | "layer" | "layer_per_head" |
    "rms_full" (over all heads' channels at once); `fused_qkv` None | "per_head" | "concat"; biases (None: from the config's
    `attention_bias` / `mlp_bias`).

    `hf_names` values may be a tuple of alternatives: the first the checkpoint holds is read.
    `defaults`: what the transformers config class fills in for a key config.json omits
    (save_pretrained writes only values that differ). RoPE: `max_positions` (the class default
    of max_position_embeddings), `partial_rotary` (the default partial_rotary_factor of a
    family that rotates a prefix of each head; None: whole heads under default RoPE),
    `rope_pairing` "half" | "interleaved". `wrappers`: model_types of multimodal checkpoints
    whose `text_config` is this architecture. `chat_template`: built-in template name for
    files without one.

    Hooks (functions of the config dict with defaults applied, all optional):
    `prepare(cfg)` fills in the generic keys from the family's own ones, before anything
    is read (Falcon's num_kv_heads, ffn_hidden_size, activation); `adjust(cfg, flags)` changes `flags` (the shape fields above) from config keys;
    `layers(cfg, n_layers, window)` -> (layer_types or None, window) when config.json has no
    `layer_types`; `scales(cfg, hidden, head_dim)` -> (attention scale, embedding scale);
    `rope_params(cfg)` -> (rope parameters, theta, partial) overriding the generic reading;
    `rotary_dim(cfg, head_dim)` -> (rotary channels, the key it came from) (GPT-J);
    `rope_head_dim(cfg, layer_type, per_layer_types, head_dim)` -> the head size of a layer
    type (Gemma 4's `global_head_dim`); `fix_layer_types(types)` -> the layer types the config
    class really uses (Gemma 4 forces the last one to full attention);
    `geometry(cfg, layer_types, head_dims_by_type)` -> extra ModelConfig fields (per-layer
    head sizes, KV heads and MLP widths, KV sharing, K = V, PLE, MoE: see ModelConfig).
    """
    model_type: str
    norm: str
    hf_names: Mapping[str, str]
    max_positions: int
    defaults: Mapping[str, object] = field(default_factory=dict)
    residual: str = "sequential"
    shared_norm: bool = False
    sandwich: bool = False
    mlp: str = "gated"
    qk_norm: str | None = None
    fused_qkv: str | None = None
    qkv_bias: bool | None = None
    o_bias: bool | None = None
    mlp_bias: bool | None = None
    lm_head_bias: bool = False
    pre_norm: bool = True            # False: no norm before attention and MLP (OLMo 2)
    partial_rotary: float | None = None
    rope_pairing: str = "half"
    wrappers: tuple[str, ...] = ()
    chat_template: str = "chatml"
    gguf: GGUFArch | None = None
    runnable: bool = True
    default_layers: int = 0  # the config class's num_hidden_layers (RoPE's default pattern)
    prepare: Callable | None = None
    adjust: Callable | None = None
    layers: Callable | None = None
    scales: Callable | None = None
    rope_params: Callable | None = None
    rotary_dim: Callable | None = None
    rope_head_dim: Callable | None = None
    fix_layer_types: Callable | None = None
    geometry: Callable | None = None
    attn_softcap: bool = False           # config's attn_logit_softcapping applies (Gemma 2)
    residual_scale: str | None = None    # config key multiplying sublayer outputs (Granite)
    logit_scale: str | None = None       # config key dividing the logits (Granite)

    def flags(self) -> dict:
        """The forward-pass shape fields, as a dict `adjust` may change."""
        return dict(norm=self.norm, residual=self.residual, shared_norm=self.shared_norm,
                    sandwich=self.sandwich, mlp=self.mlp, qk_norm=self.qk_norm,
                    fused_qkv=self.fused_qkv, qkv_bias=self.qkv_bias, o_bias=self.o_bias,
                    mlp_bias=self.mlp_bias, lm_head_bias=self.lm_head_bias,
                    pre_norm=self.pre_norm)
