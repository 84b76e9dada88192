"""Hostile vocabularies and chat templates (issue 19): what the tokenizer libraries
(sentencepiece, tokenizers) and jinja2 raise on a bad GGUF `tokenizer.*` key, a bad Hugging Face
tokenizer file or a bad template becomes one line naming the file and the key, exit 1 -- the
exact line is asserted. What llama.cpp loads with a warning loads with one warning line."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

pytest.importorskip("gguf")

import edgerope  # noqa: E402
from edgerope.cli import main  # noqa: E402
from edgerope.errors import EdgeropeError  # noqa: E402
from edgerope.io.native import save_native  # noqa: E402
from edgerope.text import template as template_mod  # noqa: E402
from edgerope.text.conversation import Chat  # noqa: E402
from vocab_fixtures import BPE_TOKENS, MERGES, set_key, write_vocab_gguf  # noqa: E402
from test_q8_formats import TOKENS, V  # noqa: E402


def _spoil(key, value, vtype="ARRAY"):
    return lambda w: set_key(w, key, value, vtype)


def _retype_token(i, t):
    def edit(w):
        w.kv_data[0]["tokenizer.ggml.token_type"].value[i] = t
    return edit


SPM_DUP = TOKENS[:-1] + [TOKENS[-2]]
BPE_DUP = BPE_TOKENS[:-1] + [BPE_TOKENS[5]]

# name: (vocabulary kind, edit, the error line after "error: <path>: ")
ERRORS = {
    "spm-duplicate": ("spm", _spoil("tokenizer.ggml.tokens", SPM_DUP),
                      f"tokenizer.ggml.tokens: {TOKENS[-2]!r} appears twice (ids {V - 2} and "
                      f"{V - 1})"),
    "bpe-duplicate": ("bpe", _spoil("tokenizer.ggml.tokens", BPE_DUP),
                      f"tokenizer.ggml.tokens: {BPE_TOKENS[5]!r} appears twice (ids 5 and "
                      f"{V - 1})"),
    "merge-unknown-side": ("bpe", _spoil("tokenizer.ggml.merges",
                                         MERGES[:3] + ["i ~n"] + MERGES[4:]),
                           "tokenizer.ggml.merges[3]: 'i ~n': '~n' is not a token"),
    "merge-unknown-result": ("bpe", _spoil("tokenizer.ggml.merges", MERGES + ["h i"]),
                             f"tokenizer.ggml.merges[{len(MERGES)}]: 'h i': 'hi' is not a "
                             "token"),
    "merges-missing": ("bpe", _spoil("tokenizer.ggml.merges", None, ""),
                       "tokenizer.ggml.merges: missing (a gpt2 vocabulary needs merges)"),
    "merges-numbers": ("bpe", _spoil("tokenizer.ggml.merges", [1, 2, 3]),
                       "tokenizer.ggml.merges: expected an array of strings, found an array "
                       "of integers"),
    "scores-short": ("spm", _spoil("tokenizer.ggml.scores", [0.0] * (V - 1)),
                     f"tokenizer.ggml.scores: {V - 1} values for {V} tokens"),
    "scores-nan": ("spm", _spoil("tokenizer.ggml.scores", [0.0] * 7 + [float("nan")]
                                 + [0.0] * (V - 8)),
                   "tokenizer.ggml.scores[7]: NaN"),
    "scores-strings": ("spm", _spoil("tokenizer.ggml.scores", ["x"] * V),
                       "tokenizer.ggml.scores: expected an array of numbers, found an array "
                       "of strings"),
    "types-long": ("spm", _spoil("tokenizer.ggml.token_type", [1] * (V + 3)),
                   f"tokenizer.ggml.token_type: {V + 3} values for {V} tokens"),
    "tokens-numbers": ("spm", _spoil("tokenizer.ggml.tokens", list(range(V))),
                       "metadata key 'tokenizer.ggml.tokens' should be an array of strings, "
                       f"found an array of {V} values"),  # checked by the GGUF loader first
    "byte-token": ("spm", _retype_token(270, 6),
                   f"tokenizer.ggml.tokens[270]: {TOKENS[270]!r} has the byte token type but "
                   "is not of the form <0xXX>"),
    "model-unknown": ("spm", _spoil("tokenizer.ggml.model", "bert", "STRING"),
                      "tokenizer.ggml.model: unsupported tokenizer 'bert' (supported: llama, "
                      "gpt2, gemma4)"),
    "model-number": ("bpe", _spoil("tokenizer.ggml.model", 7, "UINT32"),
                     "tokenizer.ggml.model: expected a string, found an integer"),
    "pre-number": ("bpe", _spoil("tokenizer.ggml.pre", 7, "UINT32"),
                   "tokenizer.ggml.pre: expected a string, found an integer"),
    "add-bos-string": ("spm", _spoil("tokenizer.ggml.add_bos_token", "yes", "STRING"),
                       "tokenizer.ggml.add_bos_token: expected a bool, found a string"),
    "template-number": ("spm", _spoil("tokenizer.chat_template", 3, "UINT32"),
                        "tokenizer.chat_template: expected a string, found an integer"),
}


def _one_line(r):
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1, r.output
    assert len(lines) == 1 and "Traceback" not in r.output, r.stderr
    return lines[0]


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_vocabulary_is_one_exact_line(tmp_path, case):
    kind, edit, expected = ERRORS[case]
    path = write_vocab_gguf(str(tmp_path / f"{case}.gguf"), kind, edit)
    for cmd in (["info", path], ["generate", "-m", path, "-p", "hi", "-n", "2"]):
        r = CliRunner().invoke(main, cmd)
        assert _one_line(r) == f"error: {path}: {expected}"


WARNINGS = {  # loads (as llama.cpp does), with one warning line
    "eos-out-of-range": ("bpe", _spoil("tokenizer.ggml.eos_token_id", 5000, "UINT32"),
                         f"tokenizer.ggml.eos_token_id = 5000 is outside the vocabulary of {V} "
                         "tokens: ignored"),
    "bos-out-of-range": ("spm", _spoil("tokenizer.ggml.bos_token_id", V, "UINT32"),
                         f"tokenizer.ggml.bos_token_id = {V} is outside the vocabulary of {V} "
                         "tokens: ignored"),
    "pre-unknown": ("bpe", _spoil("tokenizer.ggml.pre", "xyz", "STRING"),
                    "unknown tokenizer.ggml.pre 'xyz': using llama.cpp's 'default' "
                    "pre-tokenizer; tokenization may differ from the model's training"),
}


@pytest.mark.parametrize("case", list(WARNINGS))
def test_tolerated_vocabulary_problems_warn_once(tmp_path, case):
    kind, edit, expected = WARNINGS[case]
    path = write_vocab_gguf(str(tmp_path / f"{case}.gguf"), kind, edit)
    r = CliRunner().invoke(main, ["generate", "-m", path, "-p", "hi", "-n", "2"])
    assert r.exit_code == 0, r.output
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")] == \
        [f"warning: {path}: {expected}"]


def test_the_reported_case_a_changed_byte_inside_the_merges(tmp_path):
    """Issue 19's report: one byte changed inside tokenizer.ggml.merges of a BPE GGUF."""
    src = write_vocab_gguf(str(tmp_path / "ok.gguf"), "bpe")
    data = bytearray(open(src, "rb").read())
    k = data.index(b"\x06\x00\x00\x00\x00\x00\x00\x00\xc4\xa0t he")  # the merge "Ġt he"
    data[k + 8 + 4] = ord("~")  # -> "Ġt ~e"
    path = str(tmp_path / "bad.gguf")
    open(path, "wb").write(bytes(data))
    r = CliRunner().invoke(main, ["info", path])
    assert _one_line(r) == f"error: {path}: tokenizer.ggml.merges[2]: 'Ġt ~e': '~e' is not a " \
        "token"


# -- chat templates ---------------------------------------------------------------------------

def _chat(path, *extra, input="hello\n"):
    return CliRunner().invoke(main, ["chat", "-m", path, "-n", "2", *extra], input=input)


TEMPLATE_ERRORS = {
    "syntax": ("{% for m in messages %}{{ m.content }",
               "syntax error on line 1: unexpected '}'"),
    "raise": ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    "unsafe": ("{{ messages.__class__ }}",
               "access to attribute '__class__' of a list is not allowed"),
    "divide": ("{{ 1 / (messages|length - 1) }}", "ZeroDivisionError: division by zero"),
    "huge-expression": ("{{ messages[0]['content'] * 100000000 }}",
                        f"an expression would build 200000000 characters or items (limit "
                        f"{template_mod.MAX_RENDER_CHARS})"),
    "megabytes": ("{% for i in range(99999) %}{{ messages }}{{ messages }}{% endfor %}",
                  f"renders more than {template_mod.MAX_RENDER_CHARS} characters"),
    "loops": ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}",
              "rendering took more than 0.3 s"),
    "recursion": ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
                  "too deep or too large to render"),
}


@pytest.mark.parametrize("case", list(TEMPLATE_ERRORS))
def test_bad_gguf_chat_template_is_one_exact_line(tmp_path, monkeypatch, case):
    template, expected = TEMPLATE_ERRORS[case]
    monkeypatch.setattr(template_mod, "MAX_RENDER_SECONDS", 0.3)
    path = write_vocab_gguf(str(tmp_path / "t.gguf"), "bpe", _spoil(
        "tokenizer.chat_template", template, "STRING"))
    assert _one_line(_chat(path)) == f"error: {path}: tokenizer.chat_template: {expected}"
    # generate does not use the template: a broken one does not stop it
    assert CliRunner().invoke(main, ["generate", "-m", path, "-p", "hi", "-n", "2"]).exit_code == 0


def test_render_bounds_leave_ordinary_templates_alone():
    msgs = [{"role": "user", "content": "x" * 300_000}, {"role": "assistant", "content": "ok"}]
    out = template_mod.render_chat("chatml", msgs * 4)  # 1.2 MB: over the fixed bound, but 8x input
    assert len(out) > template_mod.MAX_RENDER_CHARS
    t = ("{{ '%5d'|format(3) }}|{{ '{:>4}'.format(1) }}|{{ 'ab'|center(6) }}|"
         "{{ ['a', 'b']|join(', ') }}|{{ 'a-b'.replace('-', '+') }}|{{ 2 ** 10 }}")
    assert template_mod.render_chat(t, msgs[:1]) == "    3|   1|  ab  |a, b|a+b|1024"


# -- Hugging Face tokenizer files --------------------------------------------------------------

@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bpe-native")
    src = write_vocab_gguf(str(d / "m.gguf"), "bpe")
    out = str(d / "native")
    save_native(edgerope.load(src), out)
    return out


def _edited_dir(src, tmp_path, name, fn):
    d = str(tmp_path / "m")
    shutil.copytree(src, d)
    path = os.path.join(d, name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(fn(text))
    return d, path


def _json_edit(fn):
    def edit(text):
        data = json.loads(text)
        fn(data)
        return json.dumps(data)
    return edit


def test_broken_tokenizer_json_merges(bpe_dir, tmp_path):
    def spoil(data):
        data["model"]["merges"][3] = ["i", "~n"]
    d, path = _edited_dir(bpe_dir, tmp_path, "tokenizer.json", _json_edit(spoil))
    line = _one_line(CliRunner().invoke(main, ["info", d]))
    assert line.startswith(f"error: {path}: Token `~n` out of vocabulary at line 1 column ")


def test_tokenizer_json_not_json(bpe_dir, tmp_path):
    d, path = _edited_dir(bpe_dir, tmp_path, "tokenizer.json", lambda t: t[:100])
    line = _one_line(CliRunner().invoke(main, ["info", d]))
    assert line.startswith(f"error: {path}: EOF while parsing")


def test_tokenizer_config_not_json(bpe_dir, tmp_path):
    d, path = _edited_dir(bpe_dir, tmp_path, "tokenizer_config.json", lambda t: "{" + t)
    line = _one_line(CliRunner().invoke(main, ["info", d]))
    assert line.startswith(f"error: {path}: Expecting property name enclosed in double quotes")


def test_tokenizer_config_template_error_names_the_field(bpe_dir, tmp_path):
    d, path = _edited_dir(bpe_dir, tmp_path, "tokenizer_config.json", _json_edit(
        lambda c: c.__setitem__("chat_template", "{{ raise_exception('no system role') }}")))
    assert _one_line(_chat(d)) == f"error: {path}: chat_template: no system role"


def test_chat_template_jinja_file_error_names_the_file(bpe_dir, tmp_path):
    d, _ = _edited_dir(bpe_dir, tmp_path, "tokenizer_config.json", _json_edit(
        lambda c: c.pop("chat_template")))
    path = os.path.join(d, "chat_template.jinja")
    with open(path, "w") as f:
        f.write("{% if %}")
    assert _one_line(_chat(d)) == \
        f"error: {path}: syntax error on line 1: Expected an expression, got 'end of statement block'"


def test_builtin_template_errors_say_so(bpe_dir):
    m = edgerope.load(bpe_dir)
    with pytest.raises(EdgeropeError) as e:
        Chat(m, template="gemma", system="s").render(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert str(e.value) == "built-in chat template 'gemma': Conversation roles must alternate " \
        "user/assistant/user/assistant/..."


def test_spm_byte_piece_in_tokenizer_model(tmp_path):
    """A tokenizer.model whose byte-fallback piece is not <0xXX> (a flipped byte)."""
    src = write_vocab_gguf(str(tmp_path / "s.gguf"), "spm")
    d = str(tmp_path / "native")
    save_native(edgerope.load(src), d)
    path = os.path.join(d, "tokenizer.model")
    data = bytearray(open(path, "rb").read())
    k = data.index(b"<0x41>")
    data[k + 3] = ord("Z")
    open(path, "wb").write(bytes(data))
    line = _one_line(CliRunner().invoke(main, ["info", d]))
    assert line == f"error: {path}: cannot load SentencePiece model: INTERNAL: byte piece " \
        "<0xZ1> is invalid."
