"""GLM (`model_type` "glm", GLM-4-9B-chat-hf) and GLM-4 (`glm4`, GLM-4-0414): Llama-shaped
with a fused gate|up projection, q/k/v biases, and partial RoPE on 0.5 of each head with
interleaved pairs; `glm4` adds norms after attention and after the MLP (sandwich)."""
from edgerope.archs.base import GGUF_NAMES, Arch, GGUFArch, LLAMA_NAMES

_G = "blk.{i}."


def _gguf_chatglm(meta, raw):
    # llama.cpp's converter writes the eps of `layernorm_epsilon` (GLM-4-9B-chat's old key;
    # 1e-5 when absent) and a theta of 10000 x rope_ratio
    raw.update(model_type="glm", hidden_act="silu", rope_parameters=meta.partial_rope(),
               attention_bias=meta.has("blk.0.attn_q.bias"))


def _gguf_glm4(meta, raw):
    raw.update(model_type="glm4", hidden_act="silu", rope_parameters=meta.partial_rope(),
               attention_bias=meta.has("blk.0.attn_q.bias"))

ARCHS = (
    Arch("glm", norm="rms", o_bias=False, partial_rotary=0.5, rope_pairing="interleaved",
         max_positions=131072,
         hf_names={**LLAMA_NAMES, "w_gate_up": "model.layers.{i}.mlp.gate_up_proj"},
         defaults=dict(hidden_act="silu", rms_norm_eps=1.5625e-7, tie_word_embeddings=False,
                       head_dim=128, attention_bias=True, max_position_embeddings=131072),
         gguf=GGUFArch("chatglm", _gguf_chatglm, names={**GGUF_NAMES, "w_gate_up": _G + "ffn_up"})),
    Arch("glm4", norm="rms", o_bias=False, partial_rotary=0.5, rope_pairing="interleaved",
         sandwich=True, max_positions=131072,
         hf_names={**LLAMA_NAMES, "w_gate_up": "model.layers.{i}.mlp.gate_up_proj",
                   "post_attn_norm": "model.layers.{i}.post_self_attn_layernorm",
                   "post_ffn_norm": "model.layers.{i}.post_mlp_layernorm"},
         defaults=dict(hidden_act="silu", rms_norm_eps=1.5625e-7, tie_word_embeddings=False,
                       head_dim=128, attention_bias=True, max_position_embeddings=131072),
         gguf=GGUFArch("glm4", _gguf_glm4, names={
             **GGUF_NAMES, "w_gate_up": _G + "ffn_up",
             "post_attn_norm": _G + "post_attention_norm", "post_ffn_norm": _G + "post_ffw_norm"})),
)
