"""Gemma 2: as Gemma 3 without q/k norms, with attention logit soft-capping
(`attn_logit_softcapping`, 50) and final soft-capping (30), and sliding windows on every other
layer (the even ones)."""
import math

from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES

_L = "model.layers.{i}."


def _layers(cfg, n_layers, window):
    return ["sliding_attention" if (i + 1) % 2 else "full_attention"
            for i in range(n_layers)], window


def _scales(cfg, hidden, head_dim):
    return float(cfg["query_pre_attn_scalar"]) ** -0.5, math.sqrt(hidden)


def _gguf(meta, raw):
    # llama.cpp: the attention scale is 1/sqrt(head_dim) (27B: 1/sqrt(hidden / heads))
    n_layers = meta.need("block_count")
    scalar = raw["hidden_size"] // raw["num_attention_heads"] if n_layers == 46 else raw["head_dim"]
    raw.update(model_type="gemma2", hidden_activation="gelu_pytorch_tanh",
               query_pre_attn_scalar=scalar, layer_types=meta.layer_types(2),
               sliding_window=meta.opt("attention.sliding_window", 4096),
               attn_logit_softcapping=meta.opt("attn_logit_softcapping", kind=float,
                                               positive=False),
               final_logit_softcapping=meta.opt("final_logit_softcapping", kind=float,
                                                positive=False),
               rope_parameters=meta.rope)


ARCHS = (
    Arch("gemma2", norm="rms1p", sandwich=True, max_positions=8192, chat_template="gemma",
         hf_names={**LLAMA_NAMES, "post_attn_norm": _L + "post_attention_layernorm",
                   "ffn_norm": _L + "pre_feedforward_layernorm",
                   "post_ffn_norm": _L + "post_feedforward_layernorm"},
         defaults=dict(hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6,
                       tie_word_embeddings=True, attention_bias=False, head_dim=256,
                       query_pre_attn_scalar=256, sliding_window=4096,
                       final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                       max_position_embeddings=8192, num_key_value_heads=4),
         layers=_layers, scales=_scales, attn_softcap=True,
         gguf=GGUFArch("gemma2", _gguf, norm_plus_one_stored=True)),
)
