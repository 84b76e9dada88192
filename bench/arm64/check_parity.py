"""tests/test_parity.py without torch: edgerope (run here, e.g. emulated aarch64) against
transformers logits computed on the host by make_refs.py.

Run: EDGEROPE_ARM64_REFS=DIR python -m pytest bench/arm64/check_parity.py
Same models, token ids and tolerances as tests/test_parity.py (keep them in step).
"""
import json
import os

import numpy as np
import pytest

import edgerope

REFS = os.environ.get("EDGEROPE_ARM64_REFS", "")
if not os.path.isfile(os.path.join(REFS, "refs.npz")):
    pytest.skip("EDGEROPE_ARM64_REFS names no make_refs.py output", allow_module_level=True)
DATA = dict(np.load(os.path.join(REFS, "refs.npz")))
with open(os.path.join(REFS, "cases.json")) as _f:
    CASES = json.load(_f)["cases"]
IDS = DATA["ids"]


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def path(name):
    return os.path.join(REFS, "models", name)


@pytest.mark.parametrize("name", CASES)
def test_float32_logits_match_transformers(name):
    ours = edgerope.load(path(name), dtype="float32").logits(IDS)
    ref = DATA[f"logits/{name}"]
    assert ours.shape == ref.shape
    err = rel_err(ours, ref)
    assert err <= 1e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt_neox", "phi", "stablelm", "persimmon",
                                  "gptj", "glm", "qwen3", "qwen2", "mistral"])
def test_int8_logits_close_to_transformers(name):
    ours = edgerope.load(path(name), dtype="int8").logits(IDS)
    err = rel_err(ours, DATA[f"logits/{name}"])
    assert err <= 3e-2, f"{name}: relative error {err:.2e}"
    assert err > 1e-7  # int8 is not accidentally the float path


@pytest.mark.parametrize("name", ["llama", "gemma3", "mistral", "phi", "gptj", "gpt_neox"])
@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_decode_matches_prefill(name, dtype):
    m = edgerope.load(path(name), dtype=dtype)
    full = m.logits(IDS)
    s1 = m.new_session(n_ctx=64, kv_type="f32")
    steps = np.stack([s1.eval([t]).copy() for t in IDS])
    s2 = m.new_session(n_ctx=64, n_batch=5, kv_type="f32")
    chunked = s2.eval(IDS, all_logits=True)
    tol = 1e-5 if dtype == "float32" else 1e-4
    assert rel_err(steps, full) <= tol
    assert rel_err(chunked, full) <= tol


def test_sliding_window_ring_is_lossless():
    m = edgerope.load(path("gemma3"), dtype="float32")
    s = m.new_session(n_ctx=64, kv_type="f32")
    assert [c.capacity for c in s.cache.layers] == [8, 64]
    steps = np.stack([s.eval([t]).copy() for t in DATA["ids_window"]])
    assert rel_err(steps, DATA["window/gemma3"]) <= 1e-5


@pytest.mark.parametrize("kv_type,tol", [("f32", 1e-5), ("f16", 1e-3), ("int8", 2e-2)])
def test_decode_past_the_window_matches_transformers_cache(kv_type, tol):
    ids, ref = DATA["ids_decode"], DATA["decode/gemma3"]
    m = edgerope.load(path("gemma3"), dtype="float32")
    s = m.new_session(n_ctx=64, kv_type=kv_type)
    steps = np.stack([s.eval([t]).copy() for t in ids])
    errs = [rel_err(steps[i], ref[i]) for i in range(len(ids))]
    assert max(errs) <= tol, f"worst token {int(np.argmax(errs))}: {max(errs):.2e}"
    assert (steps.argmax(-1) == ref.argmax(-1)).mean() >= (1.0 if kv_type == "f32" else 0.95)


def test_logits_from_returns_the_tail_rows():
    m = edgerope.load(path("llama"), dtype="float32")
    full = m.logits(IDS)
    for k, n_batch in ((0, 64), (7, 5), (23, 4), (12, 12)):
        tail = m.new_session(n_ctx=64, n_batch=n_batch, kv_type="f32").eval(IDS, logits_from=k)
        assert tail.shape == (len(IDS) - k, full.shape[1])
        assert rel_err(tail, full[k:]) <= 1e-6
