"""Gemma 2: as Gemma 3 without q/k norms, with attention logit soft-capping
(`attn_logit_softcapping`, 50) and final soft-capping (30), and sliding windows on every other
layer (the even ones)."""
import math

from .base import Arch, LLAMA_NAMES

_L = "model.layers.{i}."


def _layers(cfg, n_layers, window):
    return ["sliding_attention" if (i + 1) % 2 else "full_attention"
            for i in range(n_layers)], window


def _scales(cfg, hidden, head_dim):
    return float(cfg["query_pre_attn_scalar"]) ** -0.5, math.sqrt(hidden)


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
         layers=_layers, scales=_scales, attn_softcap=True),
)
