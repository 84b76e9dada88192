"""Granite (IBM, 3.x): Llama with four multipliers -- the embedding
(`embedding_multiplier`), the attention scale (`attention_multiplier`, replacing
1/sqrt(head_dim)), each sublayer's output before its residual add (`residual_multiplier`)
and the logits (divided by `logits_scaling`)."""
from .base import Arch, LLAMA_NAMES


def _scales(cfg, hidden, head_dim):
    return float(cfg["attention_multiplier"]), float(cfg["embedding_multiplier"])


ARCHS = (
    Arch("granite", norm="rms", hf_names=LLAMA_NAMES, max_positions=2048,
         defaults=dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, max_position_embeddings=2048,
                       embedding_multiplier=1.0, logits_scaling=1.0, residual_multiplier=1.0,
                       attention_multiplier=1.0),
         scales=_scales, residual_scale="residual_multiplier",
         logit_scale="logits_scaling"),
)
