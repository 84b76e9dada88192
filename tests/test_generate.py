"""Generation end to end: a tiny Llama with a SentencePiece tokenizer trained by the test,
greedy tokens equal to transformers' own greedy generation; seeds; stop strings; the CLI."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgerope  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from edgerope.cli import main  # noqa: E402
from edgerope.engine.generate import GenerationStats, generate  # noqa: E402
from spm_fixture import train_tiny_spm  # noqa: E402

VOCAB = 384


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama whose vocabulary is a freshly trained SentencePiece model."""
    d = tmp_path_factory.mktemp("tiny-spm-llama")
    train_tiny_spm(str(d), vocab_size=VOCAB)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if p.ndim == 1 else 0))
        # Never pick EOS greedily, so generation runs the full length.
        model.lm_head.weight[2].fill_(0)
    model.save_pretrained(str(d))
    return str(d), model


PROMPTS = ["The lighthouse keeper", "Maria opened the bakery at", "Why is the sky blue?"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_matches_transformers_generate(tiny_dir, prompt):
    path, ref = tiny_dir
    m = edgerope.load(path, dtype="float32")
    ids = m.tokenizer.encode(prompt)
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    want = out[0, len(ids):].tolist()
    s = m.new_session(n_ctx=64)
    text = "".join(generate(m, prompt, max_tokens=16, temperature=0,
                                              session=s))
    got = s.tokens[len(ids):]
    # the last sampled token is returned but not evaluated
    assert got == want[:len(got)] and len(got) == 15
    before = m.tokenizer.decode(ids)
    after = m.tokenizer.decode(ids + want)
    assert after.startswith(before) and text == after[len(before):]


def test_int8_greedy_agrees_except_near_ties(tiny_dir):
    """Along the float32 greedy path, int8 picks the same token wherever float32's top-2
    margin is clear (random tiny models have many near-ties, real ones few). Clear: a tenth
    of the logits' spread -- int8 moves this model's logits by up to ~0.09 (0.1 std), so a
    margin of 0.05 std is still a tie that rounding noise (an activation landing on the other
    side of a rounding boundary) decides either way."""
    path, _ = tiny_dir
    f32, i8 = edgerope.load(path, dtype="float32"), edgerope.load(path, dtype="int8")
    ids = f32.tokenizer.encode(PROMPTS[0])
    seq = list(ids)
    for _ in range(16):
        seq.append(int(np.argmax(f32.logits(seq)[-1])))
    lf, li = f32.logits(seq), i8.logits(seq)
    top2 = np.sort(lf, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.1 * lf.std()
    agree = np.argmax(lf, axis=1) == np.argmax(li, axis=1)
    assert clear.sum() >= len(seq) // 2 and agree[clear].all()


def test_seed_determinism_and_variety(tiny_dir):
    path, _ = tiny_dir
    m = edgerope.load(path)
    kw = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    a = "".join(m.generate("The", seed=7, **kw))
    b = "".join(m.generate("The", seed=7, **kw))
    c = "".join(m.generate("The", seed=8, **kw))
    assert a == b
    assert a != c


def test_stop_string_is_not_emitted(tiny_dir):
    path, _ = tiny_dir
    m = edgerope.load(path)
    full = "".join(m.generate("The", max_tokens=20, temperature=0))
    stop = full[5:8]
    cut = "".join(m.generate("The", max_tokens=20, temperature=0, stop=[stop]))
    assert cut == full[:full.index(stop)]


def test_generation_stops_at_context(tiny_dir):
    path, _ = tiny_dir
    m = edgerope.load(path)
    stats = GenerationStats()
    s = m.new_session(n_ctx=12)  # sessions default to no context shift
    list(m.generate("The lighthouse", max_tokens=100, temperature=0, session=s, stats=stats))
    assert stats.stop_reason == "context" and s.pos == 12


def test_cli_generate(tiny_dir):
    path, _ = tiny_dir
    r = CliRunner()
    args = ["generate", "-m", path, "-p", "The", "-n", "12", "--seed", "3", "-t", "1"]
    a = r.invoke(main, args)
    b = r.invoke(main, args)
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and len(a.stdout.strip()) > 0
    assert "generation: 12 tokens" in a.stderr and "tok/s" in a.stderr
    g = r.invoke(main, ["generate", "-m", path, "-p", "The", "-n", "12", "--temp", "0",
                        "--dtype", "float32"])
    want = "".join(edgerope.load(path, dtype="float32").generate("The", max_tokens=12,
                                                                  temperature=0))
    assert g.stdout == want + "\n"
    p = r.invoke(main, ["generate", "-m", path, "-p", "The", "-n", "8", "--temp", "0",
                        "--profile"])
    assert p.exit_code == 0 and "| matmul.lm_head |" in p.stderr and "| sampling |" in p.stderr


def test_cli_context_shift_keep_and_kv_type(tiny_dir):
    """Past a 16-token context: with context shift (the default) generation goes on and the
    timing line says how much was dropped; --no-context-shift stops with a message; -v
    reports the KV cache; a prompt longer than the context streams through (shift) or is cut
    from the left with a warning (no shift); --keep -1 keeps the whole prompt."""
    path, _ = tiny_dir
    r = CliRunner()
    base = ["generate", "-m", path, "-c", "16", "--temp", "0", "-t", "1"]
    on = r.invoke(main, base + ["-p", "The", "-n", "40", "-v", "--kv-type", "int8"])
    assert on.exit_code == 0, on.output
    assert "generation: 40 tokens" in on.stderr and "context shifted" in on.stderr
    assert "KV cache int8:" in on.stderr and "4 sinks" in on.stderr
    off = r.invoke(main, base + ["-p", "The", "-n", "40", "--no-context-shift"])
    assert off.exit_code == 0 and "context full (16 tokens)" in off.stderr
    assert "generation: 1" in off.stderr  # 16 - prompt tokens + the last sampled one
    long = " ".join(["lighthouse keeper"] * 20)
    a = r.invoke(main, base + ["-p", long, "-n", "5"])
    assert a.exit_code == 0 and "generation: 5 tokens" in a.stderr
    b = r.invoke(main, base + ["-p", long, "-n", "5", "--no-context-shift"])
    assert b.exit_code == 0 and "warning: prompt of" in b.stderr, b.output
    assert "generation: 5 tokens" in b.stderr
    k = r.invoke(main, base + ["-p", "The lighthouse", "-n", "30", "--keep", "-1"])
    assert k.exit_code == 0 and "context shifted" in k.stderr
    bad = r.invoke(main, base + ["-p", "x", "--keep", "16"])
    assert bad.exit_code == 1 and "--keep 16 must be smaller" in bad.stderr


def test_generate_keep_whole_prompt_stays(tiny_dir):
    path, _ = tiny_dir
    m = edgerope.load(path)
    prompt = m.tokenizer.encode("The lighthouse keeper", add_bos=True)
    s = m.new_session(n_ctx=32, context_shift=True)
    stats = GenerationStats()
    list(m.generate(prompt, max_tokens=60, temperature=0, session=s, stats=stats, keep=-1))
    assert s.n_keep == len(prompt) and s.tokens[:len(prompt)] == prompt
    assert stats.n_generated == 60 and s.n_shifted > 0


@pytest.mark.parametrize("args,msg", [
    (["-m", "/nonexistent/model", "-p", "x"], "no such file"),
    (["-p", "x", "--temp", "-1"], "temperature"),
    (["-p", "x", "--top-p", "1.5"], "top_p"),
])
def test_cli_errors_are_one_line(tiny_dir, args, msg):
    path, _ = tiny_dir
    if "-m" not in args:
        args = ["-m", path] + args
    res = CliRunner().invoke(main, ["generate"] + args)
    assert res.exit_code == 1
    assert msg in res.stderr.lower()
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
