"""Tool calls in the model's own format (edgerope.text.tools): the format read off real chat
templates (llama.cpp's collection in the llama-cpp-python sdist, EDGEROPE_LLAMA_CPP), the
Lark grammar that constrains a reply to it -- driven token by token through llguidance with a
real tokenizer -- the parse back into OpenAI's `tool_calls`, and a chat with a real model
whose call is written back by the template exactly as the model wrote it."""
import json
import os

import pytest

pytest.importorskip("llguidance")

from edgerope.engine.constrain import Constraint  # noqa: E402
from edgerope.errors import ParameterError  # noqa: E402
from edgerope.text.conversation import Chat  # noqa: E402
from edgerope.text.template import TEMPLATES, render_chat  # noqa: E402
from edgerope.text.tools import GENERIC, Tools, template_format  # noqa: E402

ROOT = os.environ.get("EDGEROPE_LLAMA_CPP")
MODEL = "smollm2-135m"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {}, "additionalProperties": False}}}
HERMES = ("<tool_call>\n", "\n</tool_call>", "\n", "name", "arguments")
# template -> (prefix, suffix, separator of two calls or None, name key, arguments key),
# as each model card documents its calls; None: no JSON call syntax -> the generic format
EXPECTED = {
    "Qwen-Qwen2.5-7B-Instruct": HERMES,
    "Qwen-Qwen3-0.6B": HERMES,
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": HERMES,
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": HERMES,
    "ibm-granite-granite-4.0": HERMES,
    "meta-llama-Llama-3.1-8B-Instruct": ("", "", None, "name", "parameters"),
    "meta-llama-Llama-3.2-3B-Instruct": ("", "", None, "name", "parameters"),
    "meta-llama-Llama-3.3-70B-Instruct": ("", "", None, "name", "parameters"),
    "Qwen3-Coder": None,  # XML arguments
    "Qwen3.5-4B": None,  # XML arguments
    "mistralai-Mistral-Nemo-Instruct-2407": None,  # a list with ids
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": None,  # the name outside the JSON
    "HuggingFaceTB-SmolLM3-3B": None,  # does not write earlier calls back
    "google-gemma-2-2b-it": None,  # no tools
}


def _template(name):
    path = os.path.join(ROOT or "", "models", "templates", name + ".jinja")
    if not os.path.isfile(path):
        if os.environ.get("CI"):
            pytest.fail("EDGEROPE_LLAMA_CPP is not set: .ci/run fetches llama.cpp's templates")
        pytest.skip("llama.cpp's chat templates are not here (EDGEROPE_LLAMA_CPP)")
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def model(real_model):
    return real_model(MODEL)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format_read_off_the_template(name):
    fmt = template_format(_template(name))
    want = EXPECTED[name]
    if want is None:
        assert fmt == GENERIC
    else:
        assert fmt.native
        assert (fmt.prefix, fmt.suffix, fmt.sep, fmt.name_key, fmt.args_key) == want
        assert (fmt.item_sep, fmt.key_sep) == (", ", ": ")  # tojson's spacing


def test_builtin_templates_are_generic():
    for tmpl in TEMPLATES.values():
        assert template_format(tmpl) == GENERIC


def _accepts(tok, constraint, text) -> bool:
    """The grammar takes `text` (its tokens, one by one) and may end there."""
    guide = constraint.start()
    for t in tok.encode(text, add_bos=False):
        if not guide.m.consume_token(t):
            return False
    return guide.accepting


def _call(name, args, i=1):
    return {"id": f"call{i:05d}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct"])
def test_grammar_and_parse_round_trip(model, name):
    """What the template writes for a call is what the grammar accepts and what parse reads
    back; a wrong tool, arguments off the schema or a broken call are refused."""
    tok, tmpl = model.tokenizer, _template(name)
    user = [{"role": "user", "content": "Weather in Paris?"}]
    for choice in ("auto", "required"):
        tools = Tools([WEATHER, CLOCK], choice, tmpl, parallel=True)
        c = Constraint.build(tok, **tools.constraint())
        args = {"city": "Paris", "unit": "c"}
        msgs = tools.messages(user + [{"role": "assistant", "content": None,
                                       "tool_calls": [_call("get_weather", args)]}])
        base = render_chat(tmpl, tools.messages(user), **tools.template_kwargs())
        turn = render_chat(tmpl, msgs, add_generation_prompt=False,
                           **tools.template_kwargs())[len(base):]
        written = turn[:turn.rindex("<|")]  # the call, without the end-of-turn marker
        assert _accepts(tok, c, written), (choice, written)
        content, calls = tools.parse(written)
        assert content is None and len(calls) == 1
        assert calls[0]["function"]["name"] == "get_weather"
        assert json.loads(calls[0]["function"]["arguments"]) == args
        f = tools.format
        bad = [written.replace("get_weather", "get_wether"),
               written.replace('"c"', '"k"'),
               written.replace('"Paris"', '"' + "P" * 30 + '"'),  # maxLength 20
               f.prefix + '{"name": "get_weather"}' + f.suffix]
        for text in bad:
            assert not _accepts(tok, c, text), text
        if choice == "auto":
            assert _accepts(tok, c, "It is sunny.")
            if f.prefix:  # text, then a call once the opening tag comes
                assert _accepts(tok, c, "Let me look.\n" + written)
                assert not _accepts(tok, c, "Let me look. " + f.prefix + "oops")
                assert tools.parse("Let me look.\n" + written)[0] == "Let me look."
            else:  # Llama 3.x: a reply opening with `{` is a call
                assert not _accepts(tok, c, '{"answer": 1}')
        else:
            assert not _accepts(tok, c, "It is sunny.")
        if f.sep is not None:  # two calls, when parallel
            two = f.prefix + '{"name": "get_time", "arguments": {}}' + f.suffix + f.sep + \
                written
            assert _accepts(tok, c, two)
            assert [x["function"]["name"] for x in tools.parse(two)[1]] == \
                ["get_time", "get_weather"]
            single = Constraint.build(tok, **Tools([WEATHER, CLOCK], choice, tmpl).constraint())
            assert not _accepts(tok, single, two)
    forced = Tools([WEATHER, CLOCK], {"type": "function", "function": {"name": "get_time"}},
                   tmpl)
    c = Constraint.build(tok, **forced.constraint())
    assert not _accepts(tok, c, written)


@pytest.mark.parametrize("name", ["Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct"])
def test_chat_in_the_native_format(model, name):
    """A real model under the template's format: the call is parsed into tool_calls, the
    template writes it back exactly as generated (with the model's own template the cache
    is then reused: no re-prefill), the result goes in as the template's own tool turn."""
    jsonschema = pytest.importorskip("jsonschema")
    tmpl = _template(name)
    chat = Chat(model, template=tmpl, tools=[WEATHER, CLOCK], tool_choice="required",
                temperature=0, max_tokens=60)
    assert chat.tools.format.native
    question = "What is the weather in Paris?"
    prompt = chat.render([{"role": "user", "content": question}])
    assert "".join(chat.send(question)) == ""
    (call,) = chat.tool_calls
    assert call["function"]["name"] in ("get_weather", "get_time")
    params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    jsonschema.validate(json.loads(call["function"]["arguments"]),
                        params[call["function"]["name"]])
    generated = model.tokenizer.decode(chat.stats.token_ids)
    chat.set_tools([WEATHER, CLOCK], "auto")
    list(chat.send_tool_result(call["id"], '{"temp": 21}'))
    assert chat.render().startswith(prompt + generated)
    if "Qwen" in name:  # ChatML, SmolLM2's own: the tokens match too, the cache is reused
        assert chat.reprefills == 0
    marker = "<tool_response>" if "Qwen" in name else "ipython"
    assert marker in chat.render()[len(prompt + generated):]


def test_bad_parallel_flag():
    with pytest.raises(ParameterError, match="parallel_tool_calls"):
        Tools([WEATHER], "auto", parallel="yes")
