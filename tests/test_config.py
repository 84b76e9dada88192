"""config.json parsing: architectures as data, defaults of omitted keys, clear errors."""
import json

import pytest

from edgerope import archs
from edgerope.archs.config import ConfigError, load_config, parse_config

BASE = dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4)


def cfg(model_type, **kw):
    return parse_config(dict(BASE, model_type=model_type, **kw))


def test_every_arch_parses_with_minimal_keys():
    for mt in [a.model_type for a in archs.all_archs()]:
        extra = {"mistral": {"num_key_value_heads": 2}, "gemma3_text": {"num_key_value_heads": 2},
                 "gptj": {"rotary_dim": 8}}.get(mt, {})
        c = cfg(mt, **extra)
        assert c.model_type == mt and c.num_hidden_layers == 2
        assert len(c.layer_types) == 2 and set(c.rope) >= set(c.layer_types)


def test_class_defaults_fill_omitted_keys():
    # save_pretrained omits values equal to the class defaults
    assert cfg("qwen3").head_dim == 128
    assert cfg("llama").head_dim == 16
    g = cfg("gemma3_text", num_key_value_heads=1)
    assert g.head_dim == 256 and g.tie_word_embeddings and g.norm == "rms1p"
    assert g.attn_scale == pytest.approx(256 ** -0.5) and g.embed_scale == pytest.approx(8.0)
    assert cfg("glm").qkv_bias and not cfg("glm").o_bias
    assert cfg("gpt_neox").residual == "parallel"
    assert cfg("gpt_neox", use_parallel_residual=False).residual == "sequential"
    assert cfg("persimmon").qk_norm == "layer" and cfg("persimmon").hidden_act == "relu2"
    assert cfg("stablelm", qk_layernorm=True).qk_norm == "layer_per_head"


def test_gptj_legacy_names():
    c = parse_config(dict(model_type="gptj", vocab_size=100, n_embd=64, n_layer=3, n_head=4,
                          rotary_dim=8, n_positions=128))
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads) == (64, 3, 4)
    assert c.intermediate_size == 256 and c.max_position_embeddings == 128
    assert c.hidden_act == "gelu_new" and c.residual == "parallel"


def test_sliding_layer_patterns():
    g = cfg("gemma3_text", num_hidden_layers=12, sliding_window=512, num_key_value_heads=1)
    assert [c == "full_attention" for c in g.layer_types] == [(i + 1) % 6 == 0 for i in range(12)]
    assert g.window(0) == 512 and g.window(5) is None
    assert cfg("mistral", sliding_window=None, num_key_value_heads=2).sliding_window is None
    assert cfg("mistral", sliding_window=32, num_key_value_heads=2).window(1) == 32
    q = cfg("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert q.layer_types == ("full_attention", "sliding_attention")
    assert cfg("qwen2", sliding_window=16).sliding_window is None  # use_sliding_window off


def test_multimodal_gemma3_uses_text_config():
    c = parse_config({"model_type": "gemma3", "eos_token_id": [1, 106],
                      "text_config": dict(BASE, model_type="gemma3_text",
                                          num_key_value_heads=1)})
    assert c.model_type == "gemma3_text" and c.eos_token_ids == (1, 106)


@pytest.mark.parametrize("raw,msg", [
    (dict(BASE, model_type="mamba"), "unsupported model_type 'mamba'"),
    (dict(BASE, model_type="llama", num_attention_heads=0), "num_attention_heads"),
    (dict(BASE, model_type="llama", num_key_value_heads=3), "multiple of num_key_value_heads"),
    (dict(BASE, model_type="llama", hidden_size=65), "not divisible"),
    (dict(BASE, model_type="llama", rope_parameters={"rope_type": "wavy", "rope_theta": 1e4}),
     "wavy"),
    (dict(BASE, model_type="llama", layer_types=["full_attention"]), "layer_types"),
])
def test_clear_errors(raw, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_config(raw)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(dict(BASE, model_type="bert")))
    with pytest.raises(ConfigError, match=r"config.json: unsupported model_type 'bert'"):
        load_config(str(tmp_path))


def test_falcon_with_alibi_is_refused():
    with pytest.raises(ConfigError, match="ALiBi"):
        cfg("falcon", alibi=True)


def test_new_families_read_their_own_keys():
    assert cfg("falcon", new_decoder_architecture=True, num_kv_heads=2).num_key_value_heads == 2
    assert cfg("falcon").num_key_value_heads == 1  # multi-query
    assert cfg("falcon", ffn_hidden_size=None).intermediate_size == 256
    assert cfg("granite", logits_scaling=8.0, residual_multiplier=0.25).logit_scale == 8.0
    assert cfg("smollm3", num_hidden_layers=8).rope_layers == (True, True, True, False) * 2
    assert cfg("olmo2").pre_norm is False and cfg("olmo2").qk_norm == "rms_full"
    g = cfg("gemma2", num_key_value_heads=2)
    assert g.attn_softcap == 50.0 and g.layer_types == ("sliding_attention", "full_attention")
    assert cfg("phi3", rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                        "partial_rotary_factor": 0.75}).rope[
        "full_attention"].rotary_dim == 12
