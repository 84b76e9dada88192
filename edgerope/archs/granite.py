"""Granite (IBM, 3.x): Llama with four multipliers -- the embedding
(`embedding_multiplier`), the attention scale (`attention_multiplier`, replacing
1/sqrt(head_dim)), each sublayer's output before its residual add (`residual_multiplier`)
and the logits (divided by `logits_scaling`)."""
from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES


def _scales(cfg, hidden, head_dim):
    return float(cfg["attention_multiplier"]), float(cfg["embedding_multiplier"])


def _gguf(meta, raw):
    raw.update(model_type="granite", hidden_act="silu", rope_parameters=meta.rope,
               attention_multiplier=meta.opt("attention.scale", 1.0, float),
               embedding_multiplier=meta.opt("embedding_scale", 1.0, float),
               residual_multiplier=meta.opt("residual_scale", 1.0, float),
               logits_scaling=meta.opt("logit_scale", 1.0, float),
               attention_bias=meta.has("blk.0.attn_q.bias"),
               mlp_bias=meta.has("blk.0.ffn_up.bias"))


ARCHS = (
    Arch("granite", norm="rms", hf_names=LLAMA_NAMES, max_positions=2048,
         defaults=dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, max_position_embeddings=2048,
                       embedding_multiplier=1.0, logits_scaling=1.0, residual_multiplier=1.0,
                       attention_multiplier=1.0),
         scales=_scales, residual_scale="residual_multiplier",
         logit_scale="logits_scaling", gguf=GGUFArch("granite", _gguf, unpermute_qk=True)),
)
