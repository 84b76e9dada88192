"""Qwen 2 and Qwen 3: Llama-shaped; Qwen 2 has q/k/v biases, Qwen 3 per-head q/k RMSNorms.
`use_sliding_window` puts a window on the layers from `max_window_layers` on."""
from edgerope.archs.base import Arch, GGUFArch, LLAMA_NAMES


def _adjust(cfg, flags):
    if not cfg.get("use_sliding_window"):
        cfg["sliding_window"] = None  # as the config class does


def _layers(cfg, n_layers, window):
    if not cfg.get("use_sliding_window"):
        return None, window
    first = int(cfg.get("max_window_layers") or 0)
    return ["sliding_attention" if window is not None and i >= first else "full_attention"
            for i in range(n_layers)], window


def _gguf(model_type):
    def config(meta, raw):
        # llama.cpp's qwen2 / qwen3 architectures have no sliding window
        raw.update(model_type=model_type, hidden_act="silu", rope_parameters=meta.rope,
                   use_sliding_window=False)
    return config


_COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, tie_word_embeddings=False,
               use_sliding_window=False, sliding_window=4096, max_window_layers=28,
               max_position_embeddings=32768)

ARCHS = (
    Arch("qwen2", norm="rms", hf_names=LLAMA_NAMES, max_positions=32768, qkv_bias=True,
         o_bias=False, defaults=_COMMON, adjust=_adjust, layers=_layers,
         gguf=GGUFArch("qwen2", _gguf("qwen2"))),
    Arch("qwen3", norm="rms", hf_names=LLAMA_NAMES, max_positions=32768, qk_norm="rms",
         defaults=dict(_COMMON, head_dim=128, attention_bias=False), adjust=_adjust,
         layers=_layers, gguf=GGUFArch("qwen3", _gguf("qwen3"))),
)
