"""Chat: templates (against the official formats and transformers' own renderer), the sandbox,
KV-cache reuse across turns (only new tokens evaluated, results equal to a fresh evaluation of
the whole rendered conversation), cancellation, context limits, and the `run_chat` loop.

The model is a tiny random Llama whose SentencePiece vocabulary is trained by the test with
"<|im_start|>" / "<|im_end|>" as pieces, so the built-in ChatML template applies; "<|im_end|>"
is an end-of-sequence id. Its lm_head can only score word-start pieces ("▁the", "▁was", ...),
which re-tokenize to themselves, so greedy replies survive the text round trip every turn.
"""
import io
import json
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgerope  # noqa: E402
from edgerope.apps.chat import run_chat  # noqa: E402
from edgerope.errors import ContextFullError, EdgeropeError  # noqa: E402
from edgerope.text.conversation import Chat  # noqa: E402
from edgerope.text.template import TEMPLATES, pick_template, render_chat  # noqa: E402
from edgerope.text.tokenizer import SentencePieceTokenizer  # noqa: E402
from spm_fixture import train_tiny_spm  # noqa: E402

VOCAB = 384
IM_START, IM_END = 3, 4  # user-defined pieces come right after unk, bos, eos
MSGS = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there "},
    {"role": "assistant", "content": " Hello!\n"},
    {"role": "user", "content": "How are you?"},
]
TURNS = ["Hello there", "Why is the sky blue?", "Tell me about the lighthouse."]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tiny-chat-llama"))
    path = train_tiny_spm(d, vocab_size=VOCAB, user_defined_symbols=["<|im_start|>", "<|im_end|>"])
    sp = SentencePieceTokenizer(path).sp
    assert sp.id_to_piece(IM_START) == "<|im_start|>" and sp.id_to_piece(IM_END) == "<|im_end|>"
    words = [i for i in range(VOCAB) if sp.id_to_piece(i).startswith("\u2581")
             and sp.id_to_piece(i)[1:].isalpha()
             and sp.encode("x " + sp.id_to_piece(i)[1:])[-1:] == [i]]
    assert len(words) >= 10
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=512,
                                   bos_token_id=1, eos_token_id=[2, IM_END])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.1 + (1.0 if p.ndim == 1 else 0))
        # Only word pieces get a score; every other row (EOS included) sits at logit 0, below
        # the best of the words in practice, so greedy never picks it.
        others = torch.ones(VOCAB, dtype=torch.bool)
        others[words] = False
        model.lm_head.weight[others] = 0
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def model(chat_dir):
    return edgerope.load(chat_dir, dtype="float32")


# float32 KV: cached turns then equal a fresh evaluation to float rounding (an f16 / int8 cache
# rounds stored keys, a fresh prefill attends to its own keys unrounded)
GREEDY = dict(temperature=0, max_tokens=8, repeat_penalty=1.3, kv_type="f32")


def count_evals(session):
    """Wrap session.eval; returns the list of token counts of each call."""
    calls, real = [], session.eval

    def wrapped(ids, *a, **k):
        calls.append(len(ids))
        return real(ids, *a, **k)
    session.eval = wrapped
    return calls


# -- templates ---------------------------------------------------------------------------------

WANT = {
    "gemma": "<bos><start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n"
             "<start_of_turn>model\nHello!<end_of_turn>\n"
             "<start_of_turn>user\nHow are you?<end_of_turn>\n"
             "<start_of_turn>model\n",
    "chatml": "<|im_start|>system\nYou are terse.<|im_end|>\n"
              "<|im_start|>user\nHi there <|im_end|>\n"
              "<|im_start|>assistant\n Hello!\n<|im_end|>\n"
              "<|im_start|>user\nHow are you?<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
}
BOS = {"gemma": "<bos>", "chatml": "<s>", "llama3": "<|begin_of_text|>"}


@pytest.mark.parametrize("name", sorted(WANT))
def test_builtin_templates_render_official_format(name):
    got = render_chat(TEMPLATES[name], MSGS, bos_token=BOS[name], eos_token="<eos>")
    assert got == WANT[name]
    assert render_chat(name, MSGS, bos_token=BOS[name]) == got  # by name too
    # without the generation prompt the text ends with the last turn
    tail = {"gemma": "<start_of_turn>model\n", "chatml": "<|im_start|>assistant\n",
            "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}[name]
    assert render_chat(name, MSGS, add_generation_prompt=False,
                       bos_token=BOS[name]) == WANT[name][:-len(tail)]


@pytest.mark.parametrize("name", sorted(WANT))
def test_builtin_templates_match_transformers_renderer(name):
    from transformers.utils.chat_template_utils import render_jinja_template
    for msgs in (MSGS, MSGS[1:], MSGS[1:2]):
        for gen in (True, False):
            ref = render_jinja_template(conversations=[msgs], chat_template=TEMPLATES[name],
                                        add_generation_prompt=gen, bos_token="<B>",
                                        eos_token="<E>")[0][0]
            assert render_chat(name, msgs, add_generation_prompt=gen, bos_token="<B>",
                               eos_token="<E>") == ref


def test_gemma_without_system_and_role_alternation():
    assert render_chat("gemma", [{"role": "user", "content": "Hi"}], bos_token="<bos>") == \
        "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    with pytest.raises(EdgeropeError, match="roles must alternate"):
        render_chat("gemma", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_hf_helpers_are_available():
    t = ("{% generation %}{{ messages | tojson }}{% endgeneration %}|{{ strftime_now('%Y') }}"
         "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.content }}"
         "{% endfor %}")
    out = render_chat(t, [{"role": "user", "content": "é"}, {"role": "user", "content": "b"}])
    head, tail = out.split("|")
    assert head == '[{"role": "user", "content": "é"}, {"role": "user", "content": "b"}]'
    assert tail[:4].isdigit() and tail[4:] == "b"


@pytest.mark.parametrize("template", [
    "{{ messages.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ messages.append(1) }}",
    "{% for m in messages %}{{ m.content ",
    "{{ raise_exception('no tools here') }}",
    "{{ 1 / 0 }}",
])
def test_template_errors_are_one_line_edgerope_errors(template):
    with pytest.raises(EdgeropeError) as e:
        render_chat(template, [{"role": "user", "content": "hi"}])
    msg = str(e.value)
    assert msg.startswith("chat template: ") and "\n" not in msg
    if "__" in template:
        assert "not allowed" in msg


def test_bad_template_fails_when_the_chat_is_created(model):
    with pytest.raises(EdgeropeError, match="chat template"):
        Chat(model, template="{{ messages.__class__.__name__ }}")


def test_pick_template():
    def fake(model_type, chat_template=None):
        tok = types.SimpleNamespace(chat_template=chat_template, chat_template_origin=None)
        return types.SimpleNamespace(tokenizer=tok,
                                     config=types.SimpleNamespace(model_type=model_type))
    assert pick_template(fake("gemma3_text")) == TEMPLATES["gemma"]
    assert pick_template(fake("llama")) == TEMPLATES["chatml"]
    assert pick_template(fake("qwen2")) == TEMPLATES["chatml"]
    assert pick_template(fake("gemma3_text", "{{ 'own' }}")) == "{{ 'own' }}"
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    assert pick_template(fake("llama", named)) == "D"


# -- the conversation --------------------------------------------------------------------------

def test_chat_encodes_with_bos_and_turn_markers(model):
    chat = Chat(model, system="Be brief.", **GREEDY)
    ids = chat.encode(chat.render(chat.messages + [{"role": "user", "content": "Hi"}]))
    assert ids[0] == model.tokenizer.bos_id and ids.count(model.tokenizer.bos_id) == 1
    assert ids.count(IM_START) == 3 and ids.count(IM_END) == 2
    # a template that writes the BOS itself gets exactly one
    chat2 = Chat(model, template="{{ bos_token }}{{ messages[-1].content }}", **GREEDY)
    ids2 = chat2.encode(chat2.render([{"role": "user", "content": "Hi"}]))
    assert ids2[0] == 1 and ids2.count(1) == 1


def test_second_turn_evaluates_only_the_new_tokens(model):
    chat = Chat(model, system="You are terse.", **GREEDY)
    first = "".join(chat.send(TURNS[0]))
    assert first and chat.messages[-1] == {"role": "assistant", "content": first}
    assert chat.stats.n_generated == 8 and chat.stats.stop_reason == "length"
    cached = list(chat.session.tokens)
    calls = count_evals(chat.session)
    second = "".join(chat.send(TURNS[1]))
    ids = chat.encode(chat.render(chat.messages[:-1]))  # the conversation the turn rendered
    assert ids[:len(cached)] == cached  # the whole cache was a prefix: nothing re-evaluated
    new = len(ids) - len(cached)
    assert calls[0] == new and chat.stats.n_prompt == new
    assert calls[1:] == [1] * (chat.stats.n_generated - 1)  # the last sampled token is not fed
    assert chat.reprefills == 0
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.messages[-1]["content"] == second


def fresh_replies(model, messages_per_turn, max_tokens=8, **kw):
    """Non-cached reference: every turn renders the conversation so far, evaluates it in a new
    session and decodes greedily."""
    chat = Chat(model, **GREEDY)  # only for its render/encode
    out, logits = [], []
    for msgs in messages_per_turn:
        ids = chat.encode(chat.render(msgs))
        logits.append(model.logits(ids)[-1])
        out.append("".join(model.generate(ids, max_tokens=max_tokens, temperature=0,
                                          repeat_penalty=1.3, kv_type="f32", **kw)))
    return out, logits


def run_turns(chat, turns):
    """Send each turn; returns (replies, last-token logits of each turn's prompt, the
    conversation rendered by each turn)."""
    replies, logits, convs = [], [], []
    real = chat.session.eval
    state = {"first": False}

    def wrapped(ids, *a, **k):
        out = real(ids, *a, **k)
        if state["first"]:
            logits.append(np.array(out))
            state["first"] = False
        return out
    chat.session.eval = wrapped
    for t in turns:
        state["first"] = True
        convs.append([dict(m) for m in chat.messages] + [{"role": "user", "content": t}])
        replies.append("".join(chat.send(t)))
    return replies, logits, convs


def test_multi_turn_equals_fresh_evaluation(model):
    chat = Chat(model, system="You are terse.", **GREEDY)
    replies, logits, convs = run_turns(chat, TURNS)
    want, want_logits = fresh_replies(model, convs)
    assert replies == want
    for a, b in zip(logits, want_logits):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert chat.reprefills == 0
    assert len(chat.messages) == 1 + 2 * len(TURNS)


def test_diverging_history_is_reprefilled(model):
    chat = Chat(model, system="You are terse.", **GREEDY)
    "".join(chat.send(TURNS[0]))
    chat.messages[-1]["content"] = " the bakery"  # rewrite the reply: the cache no longer matches
    calls = count_evals(chat.session)
    reply = "".join(chat.send(TURNS[1]))
    ids = chat.encode(chat.render(chat.messages[:-1]))
    assert chat.reprefills == 1 and calls[0] == len(ids) == chat.stats.n_prompt
    want, _ = fresh_replies(model, [chat.messages[:-1]])
    assert reply == want[0]


def test_one_reply_at_a_time(model):
    chat = Chat(model, **GREEDY)
    it = chat.send(TURNS[0])
    next(it)
    with pytest.raises(RuntimeError, match="still streaming"):
        next(chat.send(TURNS[1]))
    rest = "".join(it)
    assert rest and [m["role"] for m in chat.messages] == ["user", "assistant"]


def test_template_kwargs(model):
    chat = Chat(model, template="{{ greeting }} {{ messages[-1].content }}",
                template_kwargs={"greeting": "Hi"}, **GREEDY)
    assert chat.render([{"role": "user", "content": "there"}]) == "Hi there"


def test_reset_keeps_system_prompt(model):
    chat = Chat(model, system="You are terse.", **GREEDY)
    a = "".join(chat.send(TURNS[0]))
    "".join(chat.send(TURNS[1]))
    chat.reset()
    assert chat.messages == [{"role": "system", "content": "You are terse."}]
    assert chat.session.pos == 0
    assert "".join(chat.send(TURNS[0])) == a and chat.reprefills == 0


def test_stops_on_end_of_turn_token(chat_dir, model):
    # a turn whose greedy reply has a token that did not occur before it, at k >= 1
    for text in TURNS + ["The train to the city", "Maria opened the bakery at"]:
        chat = Chat(model, **GREEDY)
        start = len(chat.encode(chat.render([{"role": "user", "content": text}])))
        "".join(chat.send(text))
        gen = chat.session.tokens[start:]
        k = next((i for i in range(1, len(gen)) if gen[i] not in gen[:i]), None)
        if k is not None:
            break
    assert k is not None
    # the same model whose tokenizer also ends a turn on gen[k]
    m2 = edgerope.load(chat_dir, dtype="float32")
    m2.tokenizer = SentencePieceTokenizer(f"{chat_dir}/tokenizer.model", eos_ids=[2, IM_END, gen[k]])
    chat2 = Chat(m2, **GREEDY)
    reply = "".join(chat2.send(text))
    assert chat2.stats.stop_reason == "eos" and chat2.stats.n_generated == k
    stream = m2.tokenizer.stream(prefix=chat2.session.tokens[:start])
    assert reply == "".join(stream.push(t) for t in gen[:k]) + stream.flush()
    assert chat2.messages[-1] == {"role": "assistant", "content": reply}


def test_cancelled_reply_leaves_no_trace(model):
    chat = Chat(model, system="You are terse.", **GREEDY)
    "".join(chat.send(TURNS[0]))
    before = [dict(m) for m in chat.messages]
    it = chat.send("Never mind")
    next(it), next(it)
    it.close()  # what run_chat does on Ctrl-C
    assert chat.messages == before
    replies, _, convs = run_turns(chat, TURNS[1:])
    assert chat.reprefills == 1  # the cancelled turn's tokens had to go
    want, _ = fresh_replies(model, convs)
    assert replies == want


def test_interrupted_prefill_does_not_corrupt_the_cache(model, monkeypatch):
    """Ctrl-C inside a forward pass leaves keys beyond session.pos in the cache; the next turn
    must start from a clean session."""
    from edgerope.engine import model as model_mod
    chat = Chat(model, system="You are terse.", **GREEDY)
    "".join(chat.send(TURNS[0]))
    real_mlp, n = model_mod._mlp, [0]

    def mlp(*a):
        n[0] += 1
        if n[0] == 2:  # layer 1 of the prefill: layers 0 and 1 already stored their keys
            raise KeyboardInterrupt
        return real_mlp(*a)
    monkeypatch.setattr(model_mod, "_mlp", mlp)
    with pytest.raises(KeyboardInterrupt):
        "".join(chat.send(TURNS[1]))
    monkeypatch.setattr(model_mod, "_mlp", real_mlp)
    assert len(chat.messages) == 3
    replies, logits, convs = run_turns(chat, TURNS[1:])
    assert chat.reprefills == 1
    want, want_logits = fresh_replies(model, convs)
    assert replies == want
    np.testing.assert_allclose(logits[0], want_logits[0], rtol=1e-4, atol=1e-4)


def test_full_context(model):
    # no max_tokens, no context shift: until the context is full
    chat = Chat(model, n_ctx=40, temperature=0, context_shift=False)
    reply = "".join(chat.send(TURNS[0]))
    assert chat.stats.stop_reason == "context" and chat.session.pos == 40 and reply
    assert chat.messages[-1]["content"] == reply
    n = len(chat.messages)
    with pytest.raises(ContextFullError, match="context full"):
        "".join(chat.send(TURNS[1]))
    assert len(chat.messages) == n and chat.session.pos == 40  # nothing lost, nothing added


def test_chat_goes_on_past_the_context_keeping_the_system_prompt(model):
    """With context shift (the default) a 40-token context carries a long conversation: old
    turns fall out, the system prompt (keep=-1) stays in front as the sinks, the cached
    history is reused (no re-prefill), and an unlimited reply stops at n_ctx tokens."""
    chat = Chat(model, system="Be brief and kind.", n_ctx=40, temperature=0, max_tokens=6)
    sess = chat.session
    head = chat.encode(chat.render(chat.messages + [{"role": "user", "content": "Q"}]))
    assert 0 < sess.n_keep <= 20 and sess.n_keep < len(head)
    sinks = head[:sess.n_keep]
    for i in range(6):
        reply = "".join(chat.send(TURNS[i % len(TURNS)]))
        assert chat.stats.stop_reason in ("length", "eos") and reply is not None
        assert sess.pos <= 40 and sess.tokens[:sess.n_keep] == sinks
    assert sess.n_shifted > 0 and chat.reprefills == 0
    assert len(chat.messages) == 1 + 2 * 6
    "".join(chat.send("more", max_tokens=None))
    assert chat.stats.n_generated <= 40 and chat.stats.stop_reason in ("length", "eos")


def test_seeded_chats_are_reproducible(model):
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11, max_tokens=6)
    a, _, _ = run_turns(Chat(model, **kw), TURNS)
    b, _, _ = run_turns(Chat(model, **kw), TURNS)
    assert a == b and len(set(a)) > 1


def test_bad_options(model):
    with pytest.raises(ValueError, match="temperature"):
        Chat(model, temperature=-1)
    with pytest.raises(TypeError):
        Chat(model, temprature=0)
    chat = Chat(model, **GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        chat.send("hi", top_p=2.0)
    with pytest.raises(ValueError, match="max_tokens"):
        chat.send("hi", max_tokens=0)
    assert len(chat.messages) == 0


# -- run_chat ----------------------------------------------------------------------------------

def run(model, text, **kw):
    out, err = io.StringIO(), io.StringIO()
    code = run_chat(model, input=io.StringIO(text), output=out, err=err, **kw)
    return code, out.getvalue(), err.getvalue()


def chat_replies(model, turns, **kw):
    chat = Chat(model, **dict(GREEDY, **kw))
    return ["".join(chat.send(t)) for t in turns]


def test_run_chat_reads_one_turn_per_line(model):
    code, out, err = run(model, f"{TURNS[0]}\n{TURNS[1]}\n", system="You are terse.", **GREEDY)
    want = chat_replies(model, TURNS[:2], system="You are terse.")
    assert code == 0 and err == ""
    assert out == want[0] + "\n" + want[1] + "\n"


def test_run_chat_reset_exit_eof(model):
    code, out, err = run(model, f"{TURNS[0]}\n/reset\n{TURNS[0]}\n\n/exit\n{TURNS[1]}\n", **GREEDY)
    r = chat_replies(model, TURNS[:1])[0]
    assert code == 0 and out == r + "\n" + r + "\n"  # same reply after the reset, nothing after /exit
    assert len(err.strip().splitlines()) == 1 and "reset" in err
    assert run(model, "", **GREEDY) == (0, "", "")
    assert run(model, TURNS[0], **GREEDY)[1] == r + "\n"  # a last line without newline counts


def test_run_chat_interactive_prompt(model):
    code, out, _ = run(model, f"{TURNS[0]}\n", interactive=True, **GREEDY)
    r = chat_replies(model, TURNS[:1])[0]
    assert code == 0 and out == "> " + r + "\n> \n"  # EOF at the prompt ends the line


class _CtrlCOnce(io.StringIO):
    """Output that raises KeyboardInterrupt at its `at`-th write, like Ctrl-C mid-reply."""

    def __init__(self, at):
        super().__init__()
        self.n, self.at = 0, at

    def write(self, s):
        self.n += 1
        if self.n == self.at:
            raise KeyboardInterrupt
        return super().write(s)


def test_run_chat_ctrl_c_cancels_the_reply_and_continues(model):
    out, err = _CtrlCOnce(at=3), io.StringIO()
    code = run_chat(model, input=io.StringIO(f"{TURNS[0]}\n{TURNS[1]}\n"), output=out, err=err,
                    **GREEDY)
    first = chat_replies(model, TURNS[:1])[0]
    # the cancelled turn is forgotten: the second line is answered as a first turn
    second = chat_replies(model, TURNS[1:2])[0]
    text = out.getvalue()
    assert code == 0 and text.endswith("\n" + second + "\n")
    assert first.startswith(text[:-len(second) - 2])


def test_run_chat_ctrl_c_at_prompt_exits(model):
    class Input(io.StringIO):
        def readline(self, *a):
            raise KeyboardInterrupt
    out = io.StringIO()
    assert run_chat(model, input=Input(), output=out, err=io.StringIO(), **GREEDY) == 0
    assert out.getvalue() == "\n"


def test_run_chat_full_context_message(model):
    code, out, err = run(model, f"{TURNS[0]}\n{TURNS[1]}\n", n_ctx=40, temperature=0,
                         context_shift=False)
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("context full (40 tokens)")
    assert lines[1].startswith("error: context full")
    assert out.count("\n") == 1


def test_tools_in_chat():
    """Chat(tools=...): a reply constrained to a tool call (recorded with its tool_calls),
    the result given back, the next reply."""
    pytest.importorskip("llguidance")
    jsonschema = pytest.importorskip("jsonschema")
    from edgerope.errors import EdgeropeError
    from edgerope.io.registry import load_any, locate
    try:
        locate("smollm2-135m")
    except EdgeropeError as e:
        pytest.skip(str(e))
    m = load_any("smollm2-135m")
    params = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
              "required": ["city"], "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params}}]
    chat = Chat(m, tools=tools, tool_choice="required", temperature=0, max_tokens=60)
    assert "".join(chat.send("Weather in Paris?")) == ""
    call = chat.tool_calls[0]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), params)
    assert chat.messages[-1]["tool_calls"] == chat.tool_calls
    chat.set_tools(tools, "auto")  # the next reply may answer
    reply = "".join(chat.send_tool_result(call["id"], '{"temp": 21}'))
    assert [x["role"] for x in chat.messages] == ["user", "assistant", "tool", "assistant"]
    assert chat.tool_calls is not None or isinstance(reply, str)
    with pytest.raises(EdgeropeError):
        Chat(m, tools=[{"type": "function", "function": {"name": ""}}])


def test_chat_cli_tools(tmp_path):
    """`edgerope chat --tools FILE`: a call is one `tool_call: {...}` line, the next input
    line its result."""
    pytest.importorskip("llguidance")
    from click.testing import CliRunner
    from edgerope.cli import main
    from edgerope.errors import EdgeropeError
    from edgerope.io.registry import locate
    try:
        locate("smollm2-135m")
    except EdgeropeError as e:
        pytest.skip(str(e))
    f = tmp_path / "tools.json"
    f.write_text(json.dumps([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 20}}, "required": ["city"],
            "additionalProperties": False}}}]))
    r = CliRunner().invoke(main, ["chat", "-m", "smollm2-135m", "--tools", str(f), "--temp",
                                  "0", "-n", "60", "-q"],
                           input='Call get_weather for Paris.\n{"temp": 21}\n')
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("tool_call: ")
    call = json.loads(lines[0][len("tool_call: "):])
    assert call["name"] == "get_weather" and call["arguments"] == {"city": "Paris"}
    r = CliRunner().invoke(main, ["chat", "-m", "smollm2-135m", "--tools", "{nope", "-q"],
                           input="hi\n")
    assert r.exit_code == 1 and "--tools: not valid JSON" in r.output
