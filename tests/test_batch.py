"""Batched forward (edgerope.engine.batch): several sequences in one pass, each against its
own KV cache, give each sequence's own logits -- the same as evaluating it alone in a
Session, bit for bit when it is alone in the step, within float rounding beside others."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgerope  # noqa: E402
from edgerope.engine.batch import Batch  # noqa: E402
from edgerope.errors import ContextFullError, ParameterError  # noqa: E402

# llama: plain; gemma3: sliding window 8 (rings wrap), softcap-free q/k norms; phi3: longrope
# (per-sequence RoPE tables); gemma4-e2b: KV sharing and per-layer inputs
CASES = ["llama", "gemma3", "phi3", "gemma4-e2b"]
LENS = (5, 12, 20)
STEPS = 6


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def alone(m, prompt, steps, n_ctx=64, kv_type="f32"):
    """Per step: the logits of one session fed the prompt, then its own greedy tokens (an f32
    cache by default: another split of the same tokens then gives the same numbers, where f16
    would round the keys a prefill reads fresh and a later step reads back)."""
    s = m.new_session(n_ctx=n_ctx, kv_type=kv_type)
    out = [s.eval(prompt).copy()]
    for _ in range(steps):
        out.append(s.eval([int(np.argmax(out[-1]))]).copy())
    return out


@pytest.mark.parametrize("dtype", ["float32", "int8"])
@pytest.mark.parametrize("name", CASES)
def test_batched_steps_match_each_sequence_alone(built, name, dtype):
    path, _ = built(name)
    m = edgerope.load(path, dtype=dtype, tokenizer=False)
    r = np.random.default_rng(1)
    prompts = [r.integers(3, m.config.vocab_size, n).tolist() for n in LENS]
    want = [alone(m, p, STEPS) for p in prompts]
    b = Batch(m, n_seq=3, n_ctx=64, n_batch=64, kv_type="f32")
    got = [[] for _ in prompts]
    # step 0: the first two prompts whole, the third's first half (a prefill interleaved)
    half = LENS[2] // 2
    lg = b.eval([(0, prompts[0]), (1, prompts[1]), (2, prompts[2][:half])])
    got[0].append(lg[0].copy())
    got[1].append(lg[1].copy())
    # then: sequences 0 and 1 decode while 2 finishes its prompt, then all three decode
    lg = b.eval([(0, [int(np.argmax(got[0][-1]))]), (2, prompts[2][half:]),
                 (1, [int(np.argmax(got[1][-1]))])])
    got[0].append(lg[0].copy())
    got[2].append(lg[1].copy())
    got[1].append(lg[2].copy())
    while min(len(g) for g in got) < STEPS + 1:
        parts = [(i, [int(np.argmax(g[-1]))]) for i, g in enumerate(got) if len(g) < STEPS + 1]
        lg = b.eval(parts)
        for j, (i, _) in enumerate(parts):
            got[i].append(lg[j].copy())
    tol = 1e-5 if dtype == "float32" else 2e-3
    for i in range(3):
        assert b.sessions[i].tokens[:LENS[i]] == prompts[i]
        assert b.sessions[i].pos == LENS[i] + STEPS
        for t, (g, w) in enumerate(zip(got[i], want[i])):
            assert rel(g, w) <= tol, (name, dtype, i, t, rel(g, w))


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_a_sequence_alone_in_the_batch_is_a_session(built, name):
    """Bit for bit: the same kernels on the same rows."""
    path, _ = built(name)
    m = edgerope.load(path, dtype="int8", tokenizer=False)
    prompt = np.random.default_rng(2).integers(3, m.config.vocab_size, 17).tolist()
    want = alone(m, prompt, 4, kv_type="f16")  # the default, as the batch's
    b = Batch(m, n_seq=2, n_ctx=64, n_batch=64)
    got = [b.eval([(1, prompt)])[0].copy()]
    for _ in range(4):
        got.append(b.eval([(1, [int(np.argmax(got[-1]))])])[0].copy())
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert b.sessions[0].pos == 0 and b.sessions[0]._buf is None  # no buffers of its own


def test_bad_parts_are_one_line_errors(built):
    path, _ = built("llama")
    m = edgerope.load(path, dtype="int8", tokenizer=False)
    b = Batch(m, n_seq=2, n_ctx=16, n_batch=8)
    for parts, msg in [([], "1 to 2 parts"), ([(2, [1])], "out of range"),
                       ([(0, [1]), (0, [2])], "repeated"), ([(0, [])], "token ids"),
                       ([(0, [m.config.vocab_size])], "token ids"),
                       ([(0, [1] * 5), (1, [1] * 4)], "at most 8 tokens")]:
        with pytest.raises(ParameterError, match=msg):
            b.eval(parts)
    b.eval([(0, [1] * 8)])
    b.eval([(0, [1] * 8)])
    with pytest.raises(ContextFullError):
        b.eval([(0, [1])])
    assert b.sessions[0].pos == 16 and b.sessions[1].pos == 0


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_truncate_then_evaluate_equals_a_fresh_evaluation(built, name):
    """A prompt cache keeps a shared prefix: truncating to it and evaluating the new suffix
    gives the logits of the whole new prompt evaluated from scratch."""
    path, _ = built(name)
    m = edgerope.load(path, dtype="int8", tokenizer=False)
    r = np.random.default_rng(3)
    old, new = r.integers(3, 100, 7).tolist(), r.integers(3, 100, 3).tolist()
    s = m.new_session(n_ctx=32, kv_type="f32")  # another split, the same numbers (`alone`)
    s.eval(old)
    assert s.truncate(4) and s.pos == 4 and s.tokens == old[:4]
    got = s.eval(new).copy()
    want = m.new_session(n_ctx=32, kv_type="f32").eval(old[:4] + new)
    np.testing.assert_array_equal(got, want)
    # a sliding-window ring (gemma3: 8 slots) that wrapped past the cut cannot go back
    s.eval(r.integers(3, 100, 9).tolist())
    wrapped = any(c.n > c.capacity for _, c in s.cache.owned())
    assert s.truncate(5) is (not wrapped) and s.pos == (5 if not wrapped else 16)
    with pytest.raises(ParameterError):
        s.truncate(s.pos + 1)
