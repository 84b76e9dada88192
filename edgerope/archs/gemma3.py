"""Gemma 3 (text decoder; also the text part of multimodal `gemma3` checkpoints): RMSNorm as
x*(1+w), q/k norms, sandwich norms around attention and MLP, GeGLU (tanh), embeddings scaled by
sqrt(hidden), attention scale query_pre_attn_scalar^-1/2, sliding windows on 5 of every 6
layers with their own RoPE base (10000) and the global layers' base and scaling. GGUF `gemma3`:
llama.cpp hard-codes the local base, the pattern and the attention scale, and stores norm
weights as 1 + w."""
import copy
import math

from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES

_L = "model.layers.{i}."


def _layers(cfg, n_layers, window):
    every = int(cfg.get("sliding_window_pattern") or 6)
    return ["sliding_attention" if (i + 1) % every else "full_attention"
            for i in range(n_layers)], window


def _scales(cfg, hidden, head_dim):
    return float(cfg["query_pre_attn_scalar"]) ** -0.5, math.sqrt(hidden)


def _rope_params(cfg):
    params = copy.deepcopy(cfg.get("rope_parameters")) or {
        "sliding_attention": {"rope_type": "default"}, "full_attention": {"rope_type": "default"}}
    if params.get("full_attention") is None:
        params["full_attention"] = {"rope_type": "default"}
    if cfg.get("rope_scaling") is not None:  # legacy scaling applies to global layers only
        params["full_attention"].update(cfg["rope_scaling"])
    params["full_attention"].setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
    if params.get("sliding_attention") is None:
        params["sliding_attention"] = {"rope_type": "default"}
    params["sliding_attention"].setdefault("rope_theta",
                                           cfg.get("rope_local_base_freq", 10_000.0))
    return params, None, cfg.get("partial_rotary_factor")


def _gguf(meta, raw):
    raw.update(model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
               query_pre_attn_scalar=raw["head_dim"], layer_types=meta.layer_types(6),
               sliding_window=meta.need("attention.sliding_window"),
               final_logit_softcapping=meta.opt("final_logit_softcapping", kind=float,
                                                positive=False),
               rope_parameters={"sliding_attention": {
                   "rope_type": "default",
                   "rope_theta": meta.opt("rope.freq_base_swa", 10000.0, float)},
                                "full_attention": meta.rope})


ARCHS = (
    Arch("gemma3_text", norm="rms1p", qk_norm="rms1p", sandwich=True,
         hf_names={**LLAMA_NAMES, "post_attn_norm": _L + "post_attention_layernorm",
                   "ffn_norm": _L + "pre_feedforward_layernorm",
                   "post_ffn_norm": _L + "post_feedforward_layernorm"},
         max_positions=131072,
         defaults=dict(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                       tie_word_embeddings=True, attention_bias=False, sliding_window=4096,
                       head_dim=256, query_pre_attn_scalar=256, final_logit_softcapping=None,
                       attn_logit_softcapping=None, max_position_embeddings=131072,
                       num_key_value_heads=4, sliding_window_pattern=6),
         wrappers=("gemma3",), chat_template="gemma",
         gguf=GGUFArch("gemma3", _gguf, norm_plus_one_stored=True),
         layers=_layers, default_layers=26, scales=_scales, rope_params=_rope_params),
)
