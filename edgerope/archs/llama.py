"""Llama and Mistral: RMSNorm, gated SiLU MLP, whole-head RoPE (with every scaling variant);
Mistral's sliding window applies to every layer. GGUF `llama` (Mistral files use it too)."""
from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES


def _gguf(meta, raw):
    if meta.rot != meta.head_dim:
        raise ValueError(f"partial RoPE ({meta.rot} of {meta.head_dim} channels) in a llama "
                         "file: llama rotates whole heads")
    # llama.cpp's llama architecture has no sliding window: a Mistral file runs without one
    raw.update(model_type="llama", hidden_act="silu", rope_parameters=meta.rope,
               attention_bias=meta.has("blk.0.attn_q.bias"),
               mlp_bias=meta.has("blk.0.ffn_up.bias"))


def _mistral_layers(cfg, n_layers, window):
    return (["sliding_attention"] * n_layers if window is not None else None), window


ARCHS = (
    Arch("llama", norm="rms", hf_names=LLAMA_NAMES, max_positions=2048,
         defaults=dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False, max_position_embeddings=2048),
         gguf=GGUFArch("llama", _gguf, unpermute_qk=True)),
    Arch("mistral", norm="rms", hf_names=LLAMA_NAMES, max_positions=131072,
         defaults=dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
                       sliding_window=4096, max_position_embeddings=131072,
                       num_key_value_heads=8),
         layers=_mistral_layers),
)
