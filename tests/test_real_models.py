"""Real models from the package index (Gemma 3 270M, SmolLM2 135M) against transformers'
float32 reference of the same GGUF weights: top-1 agreement, KL, perplexity ratio, greedy
generation. Skipped when the model packages are not installed."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgerope  # noqa: E402
from edgerope.errors import EdgeropeError  # noqa: E402
from edgerope.io.registry import locate  # noqa: E402

# Thresholds. float32: the issue's. int8 (Q8 weights x Q8 activations, as llama.cpp's Q8_0):
# Gemma 3 the llama.cpp figures (top-1 0.975, mean KL 0.0032, ppl ratio 1.014).
# SmolLM2 has none in the issue; llama.cpp Q8_0 measured here on these same 640 tokens against
# the same float32 reference gave top-1 0.977, KL 0.0041, ppl ratio 1.004 (bench/RESULTS.md):
# the limits allow 10% more KL than that, no more. Top-1 on 640 tokens is the noisy figure:
# rescaling every weight scale by a random 1e-6 (which re-draws the activation rounding) moves
# SmolLM2's top-1 over 0.9625-0.975 (six draws), so its bar sits below that spread; KL, the
# stable figure, keeps the tight bar.
# int4 (Q4_0 matrices, int8 embedding/output: llama.cpp's default Q4_0 file layout): llama.cpp
# itself on its Q4_0 requantization of the same files, same tokens, same reference measured
# Gemma top-1 0.747, KL 0.415, ppl ratio 1.476 and SmolLM2 0.769, 0.262, 1.232 (4 bits are
# coarse for models this small); the limits allow 10% more KL than llama.cpp, no more.
# auto (the file's own block types: Gemma 3 Q4_K_M = Q5_0 / Q8_0 / Q4_K / Q6_K, SmolLM2 Q4_1):
# llama.cpp itself on the same file, same tokens, same reference (bench/fidelity.py) measured
# Gemma top-1 0.964, KL 0.0051, ppl ratio 1.0062 and SmolLM2 0.975, 0.00313, 1.0045; the
# limits: KL no more than llama.cpp's + 10%, top-1 at the noisy bar of int8 above.
LIMITS = {"float32": dict(top1=0.999, kl=1e-6, ppl=1.0001),
          ("auto", "gemma3-270m"): dict(top1=0.955, kl=0.0056, ppl=1.012),
          ("auto", "smollm2-135m"): dict(top1=0.955, kl=0.0034, ppl=1.01),
          ("int8", "gemma3-270m"): dict(top1=0.975, kl=0.0032, ppl=1.014),
          ("int8", "smollm2-135m"): dict(top1=0.955, kl=0.0046, ppl=1.01),
          ("int4", "gemma3-270m"): dict(top1=0.72, kl=0.457, ppl=1.52),
          ("int4", "smollm2-135m"): dict(top1=0.74, kl=0.288, ppl=1.26)}
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
N_TOKENS = 640  # past Gemma 3's 512-token sliding window


def _path(name):
    try:
        return locate(name)
    except EdgeropeError as e:
        pytest.skip(str(e))


def _prose():
    import pydoc_data.topics as t
    return "\n\n".join(t.topics[k] for k in ("if", "while", "for", "try", "with", "function",
                                              "class", "import"))


@pytest.fixture(scope="module", params=["gemma3-270m", "smollm2-135m"])
def real(request):
    path = _path(request.param)
    d, f = os.path.split(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation="eager").eval()
    return request.param, path, ref


def _log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("dtype", ["float32", "int8", "int4", "auto"])
def test_logits_against_transformers(real, dtype):
    name, path, ref = real
    m = edgerope.load(path, dtype=dtype)
    ids = m.tokenizer.encode(_prose(), add_bos=True)[:N_TOKENS]
    assert len(ids) == N_TOKENS
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].float().numpy()
    got = m.logits(ids)
    lr, lo = _log_softmax(want), _log_softmax(got)
    top1 = float((want.argmax(1) == got.argmax(1)).mean())
    kl = float((np.exp(lr) * (lr - lo)).sum(1).mean())
    tgt = np.arange(len(ids) - 1), np.array(ids[1:])
    ppl_ref = float(np.exp(-lr[:-1][tgt].mean()))
    ppl = float(np.exp(-lo[:-1][tgt].mean()))
    result = dict(model=name, dtype=dtype, tokens=len(ids), top1=top1, mean_kl=kl,
                  ppl_ref=ppl_ref, ppl=ppl, ppl_ratio=ppl / ppl_ref)
    print(json.dumps(result))
    lim = LIMITS["float32"] if dtype == "float32" else LIMITS[(dtype, name)]
    assert top1 >= lim["top1"] and kl <= lim["kl"] and ppl / ppl_ref <= lim["ppl"], result


def test_greedy_generation_matches_reference(real):
    """float32 follows the reference's greedy tokens exactly; int8 does too, except that it may
    part ways at a near-tie of the reference (top-2 logits within 1.0), as any Q8 engine can."""
    name, path, ref = real
    m = edgerope.load(path, dtype="float32")
    q = edgerope.load(path, dtype="int8")
    for prompt in PROMPTS:
        ids = m.tokenizer.encode(prompt, add_bos=True)
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
            ref_logits = ref(out).logits[0].float().numpy()
        want = out[0, len(ids):].tolist()
        for model in (m, q):
            s = model.new_session(n_ctx=64)
            text = "".join(model.generate(prompt, max_tokens=10, temperature=0, session=s))
            got = s.tokens[len(ids):]
            assert text.strip()
            if model.dtype == "float32" or got[:8] == want[:8]:
                assert got[:8] == want[:8], (name, model.dtype, prompt, text)
                continue
            k = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            top2 = np.sort(ref_logits[len(ids) - 1 + k])[-2:]
            assert top2[1] - top2[0] < 1.0, (name, prompt, k, text, top2)


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_quantized_kv_cache_against_float32_kv(name):
    """int8 / f16 KV caches against the float32 KV cache on the quality text: a 320-token
    prompt, then 319 tokens decoded one by one, so every step reads hundreds of cached keys.
    float32 weights isolate the cache's error: with int8 weights the activation rounding
    turns any perturbation into fresh rounding noise (KL ~0.003 even for f16 KV, see
    bench/RESULTS.md). The issue's bar: int8 KV top-1 >= 0.98."""
    m = edgerope.load(_path(name), dtype="float32", tokenizer=True)
    ids = m.tokenizer.encode(_prose(), add_bos=True)[:N_TOKENS]

    def run(kv_type):
        s = m.new_session(n_ctx=N_TOKENS, kv_type=kv_type)
        out = [s.eval(ids[:320]).copy()]
        out += [s.eval([t]).copy() for t in ids[320:-1]]
        return np.stack(out)

    ref = _log_softmax(run("f32"))
    for kv_type, top1_min, kl_max in (("f16", 0.998, 1e-5), ("int8", 0.98, 2e-3)):
        lo = _log_softmax(run(kv_type))
        top1 = float((ref.argmax(1) == lo.argmax(1)).mean())
        kl = float((np.exp(ref) * (ref - lo)).sum(1).mean())
        print(json.dumps(dict(model=name, kv_type=kv_type, tokens=len(ref), top1=top1,
                              mean_kl=kl)))
        assert top1 >= top1_min and kl <= kl_max, (kv_type, top1, kl)


# KL(llama.cpp || edgerope) on the same file and tokens, measured (bench/fidelity.py): the
# file's own types (auto) Gemma 0.0064, SmolLM2 0.0037; on llama.cpp's Q8_0 copy (int8)
# 0.0027 and 0.0035. Both engines quantize activations the same way (Q8_0 per 32 columns,
# Q8_K per 256 for the K-quants) but not bit for bit alike (llama.cpp keeps activation scales
# in fp16, rounds half to even, and its GELU reads an fp16 table), so each adds its own
# rounding noise; the bars allow 25% over the measured.
SAME_FILE = {("auto", "gemma3-270m"): 0.008, ("auto", "smollm2-135m"): 0.0046}


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_own_block_types_follow_llama_cpp_on_the_same_file(name):
    """The file as shipped, in its own block types (nothing requantized: resident weights
    within 5% of the file), against llama.cpp running the same file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = _path(name)
    m = edgerope.load(path)  # the default: auto
    assert m.dtype == "auto"
    kinds = {lin.dtype for lin in m.weights.linears()}
    assert kinds <= {"int8", "q5_0", "q4_k", "q6_k", "q4_1"} and kinds - {"int8"}, kinds
    assert m.weights.nbytes <= 1.05 * os.path.getsize(path)
    ids = m.tokenizer.encode(_prose(), add_bos=True)[:N_TOKENS]
    got = m.logits(ids)
    llm = llama_cpp.Llama(path, n_ctx=N_TOKENS + 8, n_batch=512, n_ubatch=512,
                          logits_all=True, verbose=False, flash_attn=False, type_k=0,
                          type_v=0, n_threads=2)
    llm.eval(ids)
    want = np.array(llm.scores[:len(ids)], dtype=np.float32)
    lr, lo = _log_softmax(want), _log_softmax(got)
    kl = float((np.exp(lr) * (lr - lo)).sum(1).mean())
    top1 = float((want.argmax(1) == got.argmax(1)).mean())
    print(json.dumps(dict(model=name, tokens=len(ids), top1=top1, mean_kl=kl)))
    assert kl <= SAME_FILE[("auto", name)] and top1 >= 0.95, (kl, top1)


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_int4_conversion_is_llama_cpp_q4_0(name, tmp_path):
    """edgerope's int4 of a model is byte for byte llama.cpp's default Q4_0 requantization of
    the same file (Q4_0 matrices; the embedding/output at Q8_0 where llama.cpp keeps them)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    src = _path(name)
    dst = str(tmp_path / "q4_0.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    assert llama_cpp.llama_model_quantize(src.encode(), dst.encode(), params) == 0
    ours = edgerope.load(src, dtype="int4", tokenizer=False).weights
    theirs = edgerope.load(dst, dtype="int4", tokenizer=False).weights
    assert {lin.dtype for lin in theirs.linears()} == {"int4", "int8"}
    for a, b in zip(ours.linears(), theirs.linears()):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a.wp, b.wp)
        np.testing.assert_array_equal(a.wsp, b.wsp)


_MEMORY_RUN = """
import sys
import numpy as np
import edgerope
from edgerope.engine.memory import estimate
from edgerope.system import process_memory
m = edgerope.load(sys.argv[1])
n_ctx, n = 512, int(sys.argv[2])
s = m.new_session(n_ctx=n_ctx, context_shift=True)
logits = s.eval(m.tokenizer.encode("The capital of France is"))
while s.pos < n:
    logits = s.eval([int(np.argmax(logits))])
p = process_memory()
print(p["anonymous"] + m.weights.nbytes, estimate(m, n_ctx).total)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="Linux /proc")
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_the_memory_estimate_is_what_a_run_takes(name, tmp_path):
    """A whole 512-token context decoded (int8, from the converted copy, kernels cached by a
    short first run): anonymous memory + resident weights within 8% of
    engine.memory.estimate."""
    import subprocess
    import sys
    from edgerope.io.native import save_native
    d = str(tmp_path / "m")
    save_native(edgerope.load(_path(name)), d)
    for n in (16, 512):
        p = subprocess.run([sys.executable, "-c", _MEMORY_RUN, d, str(n)], capture_output=True,
                           text=True, timeout=600)
        assert p.returncode == 0, p.stderr
    used, est = (int(v) for v in p.stdout.split())
    assert abs(used - est) <= 0.08 * est, (used / 2**20, est / 2**20)
