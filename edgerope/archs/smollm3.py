"""SmolLM3: Llama-shaped with NoPE layers -- `no_rope_layers[i]` 0 leaves layer i without
RoPE (default: every `no_rope_layer_interval`-th, 4), and with `use_sliding_window` those
NoPE layers (only) get the sliding window."""
from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES


def _rope_flags(cfg, n):
    flags = cfg.get("no_rope_layers")
    if flags is None:
        every = int(cfg.get("no_rope_layer_interval") or 4)
        flags = [int((i + 1) % every != 0) for i in range(n)]
    if len(flags) != n:
        raise ValueError(f"'no_rope_layers' has {len(flags)} entries for {n} layers")
    return [bool(f) for f in flags]


def _layers(cfg, n_layers, window):
    rope = _rope_flags(cfg, n_layers)
    slide = cfg.get("use_sliding_window") and window is not None
    return ["sliding_attention" if slide and not rope[i] else "full_attention"
            for i in range(n_layers)], window


def _geometry(cfg, types, head_dims):
    return dict(rope_layers=tuple(_rope_flags(cfg, len(types))))


def _gguf(meta, raw):
    # llama.cpp hard-codes a NoPE layer every 4th (n_no_rope_layer_step) and no window
    raw.update(model_type="smollm3", hidden_act="silu", rope_parameters=meta.rope,
               no_rope_layer_interval=4, use_sliding_window=False)


ARCHS = (
    Arch("smollm3", norm="rms", hf_names=LLAMA_NAMES, max_positions=32768,
         defaults=dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=True,
                       attention_bias=False, mlp_bias=False, max_position_embeddings=32768,
                       use_sliding_window=False, sliding_window=None,
                       no_rope_layer_interval=4),
         layers=_layers, geometry=_geometry, gguf=GGUFArch("smollm3", _gguf, unpermute_qk=True)),
)
