"""Tiny random transformers models (the oracle of rope.md §5), saved as HF directories.

Every parameter gets a non-trivial random value (norm weights around 1 but not 1, biases
non-zero), so a skipped norm, bias or scale shows up in the logits. Matrices are drawn at
transformers' own initializer_range (std 0.02) and token embeddings at unit RMS: much larger
random weights saturate the attention softmax, and a tiny residual stream lets normalized
sublayer outputs dominate, and either amplifies int8 rounding far beyond what trained models
show.
"""
from __future__ import annotations

import os

import numpy as np

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=256)

# name -> (model_type, config kwargs). Sequences in the tests are longer than every window.
CASES: dict[str, tuple[str, dict]] = {
    "llama": ("llama", dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True)),
    "llama-gqa4": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(num_key_value_heads=2, sliding_window=8)),
    "qwen2": ("qwen2", dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                            max_window_layers=1)),
    "qwen3": ("qwen3", dict(num_key_value_heads=2, head_dim=24)),
    "gemma3": ("gemma3_text", dict(num_key_value_heads=2, head_dim=16, sliding_window=8,
                                   sliding_window_pattern=2, query_pre_attn_scalar=24,
                                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                                   rope_parameters={
                                       "sliding_attention": {"rope_type": "default",
                                                             "rope_theta": 10000.0},
                                       "full_attention": {"rope_type": "linear", "factor": 2.0,
                                                          "rope_theta": 1000000.0}})),
    "gpt_neox": ("gpt_neox", dict(rotary_pct=0.25, use_parallel_residual=True)),
    "gpt_neox-seq": ("gpt_neox", dict(rotary_pct=0.5, use_parallel_residual=False)),
    "phi": ("phi", dict(hidden_size=80, partial_rotary_factor=0.4, qk_layernorm=True,
                        num_key_value_heads=2)),
    "stablelm": ("stablelm", dict(num_key_value_heads=2, use_qkv_bias=True, qk_layernorm=True,
                                  partial_rotary_factor=0.25)),
    "stablelm-parallel": ("stablelm", dict(num_key_value_heads=4, use_parallel_residual=True)),
    "persimmon": ("persimmon", dict(qk_layernorm=True, partial_rotary_factor=0.5)),
    "gptj": ("gptj", dict(rotary_dim=8, n_inner=96)),
    "glm": ("glm", dict(num_key_value_heads=2, head_dim=16, partial_rotary_factor=0.5,
                        pad_token_id=0)),
}

# Gemma 4 in the shapes of its releases (transformers' models/gemma4): E2B (4:1 sliding:full,
# per-layer embeddings, the last layers sharing KV, double-wide MLP there), 31B (5:1, K = V on
# full layers with their own KV heads) and 26B-A4B (31B's attention plus experts).
_G4_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                               "rope_theta": 1000000.0}}
_G4 = dict(final_logit_softcapping=30.0, tie_word_embeddings=True, head_dim=16,
           global_head_dim=32, sliding_window=8, rope_parameters=_G4_ROPE)
CASES.update({
    "gemma4-e2b": ("gemma4_text", dict(
        _G4, num_hidden_layers=10, layer_types=(["sliding_attention"] * 4 + ["full_attention"]) * 2,
        num_key_value_heads=1, num_kv_shared_layers=4, use_double_wide_mlp=True,
        hidden_size_per_layer_input=8, vocab_size_per_layer_input=128)),
    "gemma4-31b": ("gemma4_text", dict(
        _G4, num_hidden_layers=6, layer_types=["sliding_attention"] * 5 + ["full_attention"],
        num_key_value_heads=2, num_global_key_value_heads=1, attention_k_eq_v=True,
        hidden_size_per_layer_input=0)),
    "gemma4-a4b": ("gemma4_text", dict(
        _G4, num_hidden_layers=6, intermediate_size=48,
        layer_types=["sliding_attention"] * 5 + ["full_attention"],
        num_key_value_heads=2, num_global_key_value_heads=1, attention_k_eq_v=True,
        hidden_size_per_layer_input=0, enable_moe_block=True, num_experts=8, top_k_experts=2,
        moe_intermediate_size=16)),
})

# More families (issue 14): Phi-3 / Phi-4-mini (fused projections, partial 0.75, longrope in
# the -longrope case), GLM-4 (sandwich norms, interleaved partial), Gemma 2 (attention
# soft-capping, alternating windows), Granite (multipliers).
CASES.update({
    "phi3": ("phi3", dict(num_key_value_heads=2, pad_token_id=0, eos_token_id=2, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75})),
    "phi3-window": ("phi3", dict(num_key_value_heads=4, sliding_window=8, pad_token_id=0,
                                 eos_token_id=2)),
    "glm4": ("glm4", dict(num_key_value_heads=2, head_dim=16, pad_token_id=0)),
    "gemma2": ("gemma2", dict(num_key_value_heads=2, head_dim=16, sliding_window=8,
                              query_pre_attn_scalar=24, final_logit_softcapping=30.0,
                              attn_logit_softcapping=0.5)),
    "smollm3": ("smollm3", dict(num_key_value_heads=2, num_hidden_layers=4,
                                no_rope_layer_interval=2, pad_token_id=0, bos_token_id=1,
                                eos_token_id=2)),
    "smollm3-window": ("smollm3", dict(num_key_value_heads=2, num_hidden_layers=4,
                                       no_rope_layers=[1, 0, 1, 0], use_sliding_window=True,
                                       sliding_window=8, pad_token_id=0, bos_token_id=1,
                                       eos_token_id=2)),
    "falcon-7b": ("falcon", dict(multi_query=True, parallel_attn=True, bias=False,
                                 ffn_hidden_size=96)),
    "falcon-40b": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2, bias=True,
                                  ffn_hidden_size=96)),
    "falcon-seq": ("falcon", dict(multi_query=False, parallel_attn=False, bias=True,
                                  ffn_hidden_size=96)),
    "olmo2": ("olmo2", dict(num_key_value_heads=2, pad_token_id=0, eos_token_id=2)),
    "granite": ("granite", dict(num_key_value_heads=2, embedding_multiplier=3.0,
                                attention_multiplier=0.2, residual_multiplier=0.5,
                                logits_scaling=4.0)),
})

_LLAMA_ROPE = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "longrope": {"rope_type": "longrope", "original_max_position_embeddings": 16},
}
_LLAMA_ROPE_ARCHS = ("llama", "phi")
CASES["phi3-longrope"] = ("phi3", dict(num_key_value_heads=2, original_max_position_embeddings=16,
                                       pad_token_id=0, eos_token_id=2,
                                       max_position_embeddings=64))
for _name, _rp in _LLAMA_ROPE.items():
    for _arch in ("llama", "phi"):
        kw = dict(CASES[_arch][1]) if _arch == "phi" else dict(num_key_value_heads=2)
        rp = dict(_rp, rope_theta=10000.0)
        if _arch == "phi":
            rp["partial_rotary_factor"] = kw.pop("partial_rotary_factor")
        if _name == "longrope":
            n = (kw.get("hidden_size", 64) // 4) * rp.get("partial_rotary_factor", 1.0) // 2
            rng = np.random.default_rng(0)
            rp["short_factor"] = [float(x) for x in 1 + rng.random(int(n))]
            rp["long_factor"] = [float(x) for x in 2 + 3 * rng.random(int(n))]
        if _name == "dynamic":
            kw["max_position_embeddings"] = 16   # sequences in the tests go past it
        kw["rope_parameters"] = rp
        CASES[f"{_arch}-{_name}"] = (CASES[_arch][0], kw)


def build(name: str, out_dir: str, seed: int = 0, **overrides):
    """Create, randomise and save tiny model `name` (config keys in `overrides` replace the
    case's); returns the transformers model (eval)."""
    import torch
    import transformers

    model_type, kw = CASES[name]
    cfg_kw = {**BASE, **kw, **overrides}
    cfg = transformers.AutoConfig.for_model(model_type, **cfg_kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1 and pname.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif p.ndim == 1:
                # norm weights in [0.5, 1.5]; Gemma stores w for a (1 + w) multiplier
                p.copy_(0.5 + torch.rand(p.shape, generator=gen) - float(model_type == "gemma3_text"))
                if model_type == "gemma4_text" and pname.endswith(("q_norm.weight",
                                                                   "k_norm.weight")):
                    # Gemma 4 scales attention logits by 1.0: its q/k norm weights carry the
                    # 1/sqrt(head_dim) a trained model needs (random ones of size 1 make the
                    # softmax a near-argmax that amplifies any rounding many times over)
                    p.mul_(p.shape[0] ** -0.25)
            elif p is emb:
                # unit-RMS token vectors (RMS sqrt(hidden) after Gemma's scale): a residual
                # stream of the size trained models have, not one that the normalized outputs
                # of Gemma's sandwich norms swamp
                p.copy_(torch.randn(p.shape, generator=gen) * cfg.hidden_size ** -0.5)
            elif pname.endswith("router.proj.weight"):
                # a decisive router, as trained ones are: with initializer-range weights all
                # experts score alike and any rounding reshuffles the top-k
                p.copy_(torch.randn(p.shape, generator=gen) * 2.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)  # initializer_range
        for bname, buf in model.named_buffers():
            if bname.endswith("layer_scalar"):  # Gemma 4: a stored buffer, not a parameter
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    return model


def reference_logits(model, ids) -> np.ndarray:
    import torch
    with torch.no_grad():
        out = model(torch.tensor([list(ids)], dtype=torch.long))
    return out.logits[0].float().numpy()
