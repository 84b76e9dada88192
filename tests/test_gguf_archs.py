"""GGUF for every architecture llama.cpp's converter writes (issue 14): tiny random Hugging Face
models converted by llama.cpp's own convert_hf_to_gguf.py (tests/gguf_fixtures.py; `.ci/run`
makes them and sets EDGEROPE_GGUF_FIXTURES) load with `-m file.gguf` and give the logits of
the same model's Hugging Face directory, which give transformers' (float32, 1e-5 relative).
Without the fixtures these tests skip locally and fail under CI."""
import json
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import edgerope  # noqa: E402
from edgerope.io.gguf_file import GGUFFile  # noqa: E402
from gguf_fixtures import CASES, MAIN_ENV  # noqa: E402

ROOT = os.environ.get("EDGEROPE_GGUF_FIXTURES")


def _fixture_json(name: str, made_by: str):
    """A JSON file .ci/run writes beside the fixtures: skipped without it locally, a failure
    under CI."""
    path = os.path.join(ROOT or "", name)
    if not ROOT or not os.path.isfile(path):
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing: .ci/run makes it ({made_by})")
        pytest.skip(f"no {name} here (EDGEROPE_GGUF_FIXTURES; {made_by})")
    with open(path) as f:
        return json.load(f)


def _manifest():
    return _fixture_json("manifest.json", "tests/gguf_fixtures.py")


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


ARCH = {**{k: v[2] for k, v in CASES.items()}, **{k: v[1] for k, v in MAIN_ENV.items()}}


def test_every_case_was_converted():
    assert sorted(_manifest()) == sorted(ARCH)


@pytest.mark.parametrize("name", sorted(ARCH))
def test_gguf_logits_equal_the_hugging_face_directory(name):
    arch = _manifest().get(name)
    if arch is None:
        pytest.fail(f"{name} was not converted (see {ROOT}.log)")
    hf_dir, gguf = os.path.join(ROOT, name), os.path.join(ROOT, name + ".gguf")
    assert GGUFFile(gguf).get("general.architecture") == arch == ARCH[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor of the file is read
        mg = edgerope.load(gguf, dtype="float32")
    mh = edgerope.load(hf_dir, dtype="float32")
    # 40 tokens: past the longrope fixture's original context of 16
    ids = np.random.default_rng(1).integers(0, mh.config.vocab_size, 40 if "longrope" in name
                                            else 24)
    ours_gguf, ours_hf = mg.logits(ids), mh.logits(ids)
    assert rel_err(ours_gguf, ours_hf) <= 1e-5, name
    ref_model = __import__("transformers").AutoModelForCausalLM.from_pretrained(
        hf_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids.tolist()])).logits[0].numpy()
    assert rel_err(ours_hf, ref) <= 1e-5, name
    # the same architecture facts from both files
    for key in ("num_key_value_heads", "head_dim", "layer_types", "qkv_bias",
                "residual", "norm", "sliding_window", "hidden_act", "layer_head_dims",
                "layer_kv_heads", "layer_ffn", "kv_source", "k_eq_v", "ple_dim",
                "moe"):  # (not model_type: Mistral is a llama file)
        assert getattr(mg.config, key) == getattr(mh.config, key), (name, key)
    assert {t: s.pairs()[0].tolist() for t, s in mg.config.rope.items()} == \
        {t: s.pairs()[0].tolist() for t, s in mh.config.rope.items()}
    # and the same tokens (not Gemma 2 / 3: their converter writes Gemma's
    # add_space_prefix=false beside the fixture's tiny SentencePiece model, which was trained
    # with a dummy prefix)
    text = "The lighthouse keeper counted 112 steps, twice."
    if name not in ("gemma2", "gemma3"):
        assert mg.tokenizer.encode(text) == mh.tokenizer.encode(text)


@pytest.mark.parametrize("name", ["gpt_neox", "phi", "gemma3", "falcon-40b", "phi3",
                                  "gemma4-e2b", "gemma4-a4b"])
def test_quantized_gguf_equals_quantized_directory(name):
    """int8 from an f32 GGUF file and from the directory: the same blocks, the same logits."""
    _manifest()
    a = edgerope.load(os.path.join(ROOT, name + ".gguf"), dtype="int8")
    b = edgerope.load(os.path.join(ROOT, name), dtype="int8")
    ids = np.arange(1, 20)
    if name.startswith("gemma4"):
        # the file holds rms_norm_eps rounded to float32 (9.99999997e-07): last bits move
        assert rel_err(a.logits(ids), b.logits(ids)) <= 1e-5
    else:
        np.testing.assert_array_equal(a.logits(ids), b.logits(ids))


def _llama_cpp():
    return _fixture_json("llama_cpp.json", "tests/llama_cpp_logits.py")


@pytest.mark.parametrize("name", sorted(ARCH))
def test_logits_equal_llama_cpp_on_the_same_file(name):
    """llama.cpp's own logits on the file (llama-cpp-python 0.3.36, f32 KV cache, flash
    attention off): edgerope's are within llama.cpp's own distance from transformers (its
    CPU GELU goes through an fp16 table: ~1e-4 on GELU models, ~1e-6 elsewhere)."""
    info = _llama_cpp()
    _manifest()
    assert name not in info["failed"], info["failed"].get(name)
    theirs = np.load(os.path.join(ROOT, name + ".llama_cpp.npy"))
    mg = edgerope.load(os.path.join(ROOT, name + ".gguf"), dtype="float32")
    ids = np.random.default_rng(1).integers(0, mg.config.vocab_size, 24)
    ours = mg.logits(ids)
    ref_model = __import__("transformers").AutoModelForCausalLM.from_pretrained(
        os.path.join(ROOT, name), torch_dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids.tolist()])).logits[0].numpy()
    llama_vs_ref = rel_err(theirs, ref)
    assert rel_err(ours, theirs) <= llama_vs_ref + 2e-5, (name, rel_err(ours, theirs),
                                                           llama_vs_ref)
