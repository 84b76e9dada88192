"""convert / info / perplexity on tiny models: the Python API and the CLI."""
import os

import numpy as np
import pytest

pytest.importorskip("torch")

import edgerope  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from edgerope.cli import main  # noqa: E402
from edgerope.io.native import is_native, save_native  # noqa: E402
from edgerope.apps.perplexity import perplexity  # noqa: E402
from spm_fixture import train_tiny_spm  # noqa: E402
from tiny_models import build  # noqa: E402

IDS = np.random.default_rng(5).integers(0, 128, 30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = {}
    for name in ("gemma3", "gpt_neox", "phi"):
        d = tmp_path_factory.mktemp(name)
        build(name, str(d))
        out[name] = str(d)
    return out


@pytest.mark.parametrize("name", ["gemma3", "gpt_neox", "phi"])
@pytest.mark.parametrize("dtype", ["int8", "float32"])
def test_convert_round_trip_identical_logits(tiny, tmp_path, name, dtype):
    m = edgerope.load(tiny[name], dtype=dtype)
    dst = save_native(m, str(tmp_path / "out"))
    assert is_native(dst) and not is_native(tiny[name])
    m2 = edgerope.load(dst, dtype=dtype)
    np.testing.assert_array_equal(m2.logits(IDS), m.logits(IDS))
    assert m2.config == m.config


def test_convert_cli_refuses_overwrite_and_leaves_no_temp(tiny, tmp_path):
    dst = str(tmp_path / "conv")
    r = CliRunner().invoke(main, ["convert", tiny["gemma3"], dst])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.stdout
    again = CliRunner().invoke(main, ["convert", tiny["gemma3"], dst])
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert sorted(os.listdir(tmp_path)) == ["conv"]
    ok = CliRunner().invoke(main, ["convert", tiny["gemma3"], dst, "--overwrite"])
    assert ok.exit_code == 0


def test_int8_native_cannot_become_float32(tiny, tmp_path):
    dst = save_native(edgerope.load(tiny["phi"], dtype="int8"), str(tmp_path / "q"))
    with pytest.raises(edgerope.WeightsError, match="not float32"):
        edgerope.load(dst, dtype="float32")


def test_info_reports_partial_rope_and_memory(tiny):
    r = CliRunner().invoke(main, ["info", tiny["gpt_neox"], "-c", "128"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "gpt_neox" in out
    assert "4 of 16 channels rotate, half pairing" in out  # rotary_pct 0.25 of head dim 16
    assert "RAM needed at context 128" in out
    r = CliRunner().invoke(main, ["info", tiny["phi"]])
    assert "8 of 20 channels rotate" in r.stdout  # partial_rotary_factor 0.4 of 20


def _naive_ppl(model, ids, n_ctx, bos):
    nll = []
    for c in range(len(ids) // n_ctx):
        w = list(ids[c * n_ctx:(c + 1) * n_ctx])
        w[0] = bos
        lg = model.logits(w).astype(np.float64)
        for j in range(n_ctx // 2, n_ctx - 1):
            x = lg[j] - lg[j].max()
            nll.append(-(x[w[j + 1]] - np.log(np.exp(x).sum())))
    return float(np.exp(np.mean(nll)))


def test_perplexity_matches_naive_windows(tmp_path):
    import pydoc_data.topics
    import torch
    import transformers

    train_tiny_spm(str(tmp_path), vocab_size=384)
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path))
    m = edgerope.load(str(tmp_path), dtype="float32")
    text = pydoc_data.topics.topics["if"] * 3
    res = perplexity(m, text, n_ctx=64, progress=False)
    ids = m.tokenizer.encode(text, add_bos=True)
    assert res.n_chunks == len(ids) // 64 and res.n_scored == res.n_chunks * 31
    assert res.ppl == pytest.approx(_naive_ppl(m, ids, 64, m.tokenizer.bos_id), rel=1e-6)
    path = tmp_path / "text.txt"
    path.write_text(text)
    r = CliRunner().invoke(main, ["perplexity", "-m", str(tmp_path), "-f", str(path), "-c", "64",
                                  "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    assert f"PPL = {res.ppl:.4f}" in r.stdout
    short = CliRunner().invoke(main, ["perplexity", "-m", str(tmp_path), "-f", str(path),
                                      "-c", "100000"])
    assert short.exit_code == 1 and "need at least" in short.stderr
