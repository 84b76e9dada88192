"""OLMo 2: norms after each sublayer instead of before (post-attention and post-feed-forward
RMSNorms, no input norm), and q/k RMSNorms over the whole projection (all heads at once), not
per head."""
from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES

_L = "model.layers.{i}."

def _gguf(meta, raw):
    raw.update(model_type="olmo2", hidden_act="silu", rope_parameters=meta.rope)


ARCHS = (
    Arch("olmo2", norm="rms", qk_norm="rms_full", sandwich=True, pre_norm=False,
         max_positions=2048,
         hf_names={**LLAMA_NAMES, "post_attn_norm": _L + "post_attention_layernorm",
                   "post_ffn_norm": _L + "post_feedforward_layernorm"},
         defaults=dict(hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=False,
                       attention_bias=False, max_position_embeddings=2048),
         gguf=GGUFArch("olmo2", _gguf)),
)
