"""Tool calls (OpenAI's `tools`) for any chat model, in the format the model's chat template
writes them -- or, where the template has none, llama.cpp's "generic" one. Either way the
reply is constrained (edgerope.engine.constrain), so a call always names a real tool with
arguments that match its schema.

Native formats are read off the template itself: it renders a probe conversation holding one
call (and one holding two) and `template_format` finds how the call was written -- the text
around the JSON (Hermes / Qwen `<tool_call>\\n...\\n</tool_call>`, nothing for Llama 3.x), the
keys (`arguments`, Llama's `parameters`), the JSON spacing (`tojson`'s ", " / ": "), what
separates two calls (none: one call per reply). The reply is then constrained by a Lark
grammar embedding the tools' schemas: with tool_choice "auto" free text, or text and then
calls once the template's opening tag appears (Llama 3.x: text that does not open with `{`,
or one call); "required" or a named function: calls only. The template gets `tools=`, the
assistant's calls and the `tool` results as themselves, as the model was trained.

Generic format, for templates with no tool syntax (Gemma, SmolLM2, ...): one JSON object,

    {"tool_call": {"name": "<one of the tools>", "arguments": {<that tool's parameters>}}}
or  {"response": "<text for the user>"}

with a system instruction listing the tools; assistant turns are written back as the JSON
the model produced (a cached prefix stays valid) and `tool` results as a user turn
`{"tool_response": ...}`, which every template accepts.

Owns: checking `tools` / `tool_choice`, finding a template's tool format, the messages and
variables the template sees, the reply's constraint, parsing a reply into OpenAI's message.
Not: rendering (edgerope.text.template), compiling or applying constraints, sampling, HTTP.
"""
from __future__ import annotations

import functools
import json
import uuid
from dataclasses import dataclass

from edgerope.errors import EdgeropeError, ParameterError
from edgerope.text.template import render_chat, template_source

__all__ = ["Tools", "ToolFormat", "GENERIC", "template_format"]

INSTRUCTION = ("Respond in JSON format, either with `tool_call` (a request to call tools) or "
               "with `response` reply to the user's request")


@dataclass(frozen=True)
class ToolFormat:
    """How a template writes calls: `prefix` + {name_key: name, args_key: {...}} + `suffix`,
    the JSON spaced with item_sep / key_sep, calls apart by `sep` (None: one call a reply).
    `native` False: the generic format (the other fields unused)."""
    native: bool = False
    prefix: str = ""
    suffix: str = ""
    sep: str | None = None
    name_key: str = "name"
    args_key: str = "arguments"
    item_sep: str = ", "
    key_sep: str = ": "

    def describe(self) -> str:
        if not self.native:
            return "generic JSON reply"
        calls = "one call a reply" if self.sep is None else f"calls apart by {self.sep!r}"
        return (f"{self.prefix!r} + {{{self.name_key!r}, {self.args_key!r}}} + "
                f"{self.suffix!r}, {calls}")


GENERIC = ToolFormat()

# The probe conversation `template_format` renders: names no template mentions.
_FN, _ARG, _TEXT = "probe_fn_q7", "probe_arg_q7", "probe text q7"
_PROBE_TOOLS = [{"type": "function", "function": {
    "name": _FN, "description": "A probe.", "parameters": {
        "type": "object", "properties": {_ARG: {"type": "integer"}}, "required": [_ARG]}}}]
_SEPARATORS = ((", ", ": "), (",", ":"), (",", ": "), (", ", ":"))


def _probe_call(i: int) -> dict:
    return {"id": f"call{i:05d}", "type": "function",  # 9 letters and digits, as Mistral asks
            "function": {"name": _FN, "arguments": {_ARG: i}}}


def _call_in(text: str, start: int, i: int):
    """(begin, end, name key, args key, separators) of the JSON object at or after `start`
    that is probe call i, as the template wrote it; None if it is not there as JSON."""
    at = text.find(json.dumps(_FN), start)
    if at < 0:
        return None
    dec = json.JSONDecoder()
    j = text.rfind("{", start, at)
    while j >= start:
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            obj, end = None, j
        if isinstance(obj, dict) and end > at:
            keys = {v if isinstance(v, str) else "args": k for k, v in obj.items()
                    if v == _FN or v == {_ARG: i}}
            if len(obj) != 2 or set(keys) != {_FN, "args"}:
                return None
            for seps in _SEPARATORS:
                if json.dumps(obj, ensure_ascii=False, separators=seps) == text[j:end]:
                    return j, end, keys[_FN], keys["args"], seps
            return None
        j = text.rfind("{", start, j)
    return None


@functools.lru_cache(maxsize=16)
def template_format(template: str, bos_token: str = "", eos_token: str = "") -> ToolFormat:
    """The tool-call format a chat template (Jinja source) writes, found by rendering a probe
    conversation; GENERIC when the template does not write calls as JSON objects of a name
    and arguments (no tool syntax, XML-style arguments, ...) or fails to render them."""
    def render(reply, generation_prompt=False):
        msgs = [{"role": "user", "content": "Call the probe."}] + ([reply] if reply else [])
        return render_chat(template, msgs, add_generation_prompt=generation_prompt,
                           bos_token=bos_token, eos_token=eos_token, tools=_PROBE_TOOLS)
    try:
        base = render(None, True)
        plain = render({"role": "assistant", "content": _TEXT})
        one = render({"role": "assistant", "content": "", "tool_calls": [_probe_call(1)]})
    except EdgeropeError:
        return GENERIC
    if not (plain.startswith(base) and one.startswith(base)):
        return GENERIC
    turn, plain = one[len(base):], plain[len(base):]
    k = plain.find(_TEXT)
    head, end = plain[:max(k, 0)], plain[k + len(_TEXT):]  # head: e.g. an empty think block
    found = _call_in(turn, 0, 1)
    if k < 0 or found is None or not end or not turn.endswith(end):
        return GENERIC
    b, e, name_key, args_key, (item_sep, key_sep) = found
    prefix = turn[len(head) if turn.startswith(head) else 0:b]
    suffix = turn[e:len(turn) - len(end)]
    sep = None
    try:
        two = render({"role": "assistant", "content": "",
                      "tool_calls": [_probe_call(1), _probe_call(2)]})
    except EdgeropeError:  # e.g. Llama 3.1: "This model only supports single tool-calls"
        two = ""
    if two.startswith(base):
        two = two[len(base):]
        first = _call_in(two, 0, 1)
        second = first and _call_in(two, first[1], 2)
        if second and two.endswith(suffix + end) and \
                two[second[1]:len(two) - len(end)] == suffix:
            between = two[first[1]:second[0]]
            if between.startswith(suffix) and between.endswith(prefix) and \
                    len(between) >= len(suffix) + len(prefix):
                sep = between[len(suffix):len(between) - len(prefix)]
    return ToolFormat(True, prefix, suffix, sep, name_key, args_key, item_sep, key_sep)


def _compact(obj) -> str:
    """JSON as the generic format's constrained replies are written."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _lit(s: str) -> str:
    """A Lark string literal (nothing for an empty string)."""
    return json.dumps(s, ensure_ascii=False) if s else ""


def _arguments(call: dict) -> dict:
    args = (call.get("function") or {}).get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except ValueError:
            raise ParameterError("messages: a tool call's arguments are not JSON") from None
    return {} if args is None else args


def _openai_call(name, arguments) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


class Tools:
    """The `tools` and `tool_choice` of a request (OpenAI's shapes), checked, and the call
    format of `template` (Jinja source or a built-in name; None: generic). `parallel`: a
    reply may hold several calls, where the format has a way to write them (as llama.cpp's
    `parallel_tool_calls`, off by default: small models otherwise call on and on)."""

    def __init__(self, tools, choice="auto", template: str | None = None, *,
                 parallel: bool = False, bos_token: str = "", eos_token: str = ""):
        if not isinstance(tools, list) or not tools:
            raise ParameterError("tools: must be a non-empty list of tools")
        self.functions = []
        for i, t in enumerate(tools):
            where = f"tools[{i}]"
            f = t.get("function") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(f, dict):
                raise ParameterError(f"{where}: must be {{\"type\": \"function\", "
                                     f"\"function\": {{...}}}}")
            name = f.get("name")
            if not isinstance(name, str) or not name:
                raise ParameterError(f"{where}.function.name: must be a non-empty string")
            params = f.get("parameters", {"type": "object", "properties": {}})
            if not isinstance(params, dict):
                raise ParameterError(f"{where}.function.parameters: must be a JSON schema")
            self.functions.append({"name": name, "description": f.get("description", ""),
                                   "parameters": params})
        names = [f["name"] for f in self.functions]
        if len(set(names)) != len(names):
            raise ParameterError("tools: two tools with one name")
        self.forced = None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if choice.get("type") != "function" or name not in names:
                raise ParameterError("tool_choice: must name one of the tools")
            self.forced = name
            choice = "required"
        if choice not in ("auto", "required", "none"):
            raise ParameterError(f"tool_choice: must be auto, required, none or a function, "
                                 f"got {choice!r}")
        self.choice = choice
        if not isinstance(parallel, bool):
            raise ParameterError(f"parallel_tool_calls: must be true or false, got {parallel!r}")
        self.parallel = parallel
        source = "" if template is None else template_source(template)
        self.template_has_tools = "tools" in source
        self.format = template_format(source, bos_token, eos_token) \
            if source and self.active else GENERIC

    @property
    def active(self) -> bool:
        return self.choice != "none"

    def _offered(self) -> list:
        return [f for f in self.functions if self.forced in (None, f["name"])]

    # -- what the template sees ------------------------------------------------------------

    def template_kwargs(self) -> dict:
        """Template variables: the tools, for templates that show them."""
        if self.format.native or self.template_has_tools:
            return {"tools": [{"type": "function", "function": f} for f in self.functions]}
        return {}

    def messages(self, messages: list) -> list:
        """The conversation as the template renders it."""
        return self._native_messages(messages) if self.format.native \
            else self._generic_messages(messages)

    def _native_messages(self, messages):
        """Calls and results as themselves (arguments as objects, as templates write them
        with `tojson`); a result also carries its tool's name."""
        out, names = [], {}
        for m in messages:
            role = m["role"]
            if role == "assistant" and m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    name = (c.get("function") or {}).get("name")
                    names[c.get("id")] = name
                    calls.append({"id": c.get("id"), "type": "function",
                                  "function": {"name": name, "arguments": _arguments(c)}})
                out.append({"role": "assistant", "content": m.get("content") or "",
                            "tool_calls": calls})
            elif role == "tool":
                out.append({"role": "tool", "tool_call_id": m.get("tool_call_id"),
                            "name": names.get(m.get("tool_call_id"), ""),
                            "content": m.get("content") or ""})
            else:
                out.append({"role": role, "content": m.get("content") or ""})
        return out

    def _generic_messages(self, messages):
        """The instruction and the tools in the system message, earlier calls as their
        JSON, results as user turns."""
        tools_text = json.dumps([{"type": "function", "function": f}
                                 for f in self.functions], ensure_ascii=False)
        note = INSTRUCTION if self.template_has_tools else \
            f"{INSTRUCTION}.\n\nAvailable tools:\n{tools_text}"
        out = []
        for m in messages:
            role = m["role"]
            if role == "assistant" and m.get("tool_calls"):
                f = m["tool_calls"][0].get("function") or {}
                out.append({"role": "assistant", "content": _compact(
                    {"tool_call": {"name": f.get("name"),
                                   "arguments": _arguments(m["tool_calls"][0])}})})
            elif role == "assistant":  # as the model wrote it: the cached prefix stays valid
                out.append({"role": "assistant",
                            "content": _compact({"response": m.get("content") or ""})})
            elif role == "tool":
                text = _compact({"tool_response": {"tool_call_id": m.get("tool_call_id"),
                                                   "content": m.get("content")}})
                if out and out[-1]["role"] == "user" and out[-1].get("_tool"):
                    out[-1]["content"] += "\n" + text
                else:
                    out.append({"role": "user", "content": text, "_tool": True})
            else:
                out.append({"role": role, "content": m.get("content") or ""})
        for m in out:
            m.pop("_tool", None)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
        return out

    # -- the reply's constraint ------------------------------------------------------------

    def constraint(self) -> dict:
        """Keyword arguments for edgerope.engine.constrain.Constraint.build."""
        return {"grammar": self.grammar()} if self.format.native \
            else {"json_schema": self.schema()}

    def schema(self) -> dict:
        """The JSON schema of a generic-format reply."""
        calls = [{"type": "object", "properties": {
            "name": {"const": f["name"]}, "arguments": f["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False}
            for f in self._offered()]
        call = {"type": "object", "properties": {"tool_call": {"anyOf": calls}},
                "required": ["tool_call"], "additionalProperties": False}
        if self.choice == "required":
            return call
        reply = {"type": "object", "properties": {"response": {"type": "string"}},
                 "required": ["response"], "additionalProperties": False}
        return {"anyOf": [call, reply]}

    def grammar(self) -> str:
        """The Lark grammar (llguidance's) of a native-format reply: the tools' schemas
        embedded, JSON spaced as the template writes it."""
        f = self.format
        calls = [{"type": "object", "properties": {
            f.name_key: {"const": fn["name"]}, f.args_key: fn["parameters"]},
            "required": [f.name_key, f.args_key], "additionalProperties": False}
            for fn in self._offered()]
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        schema = {**schema, "x-guidance": {"whitespace_flexible": False,
                                           "item_separator": f.item_sep,
                                           "key_separator": f.key_sep}}
        more = f"({_lit(f.suffix + f.sep + f.prefix)} call)*" \
            if f.sep is not None and self.parallel else ""
        rules = ["%llguidance {}", f"call: %json {json.dumps(schema, ensure_ascii=False)}",
                 f"calls: call {more} {_lit(f.suffix)}"]
        trigger = f.prefix.rstrip()
        if self.choice == "required":
            rules.append(f"start: {_lit(f.prefix)} calls")
        elif trigger:  # free text, or text and then calls from the opening tag on
            rules += [f"start: TEXT | opened {_lit(f.prefix[len(trigger):])} calls",
                      r"TEXT: /(.|\n)*/", f"opened[lazy]: TEXT {_lit(trigger)}"]
        else:  # calls open with their JSON: text must not
            rules += ["start: PLAIN | calls", r"PLAIN: /([^{](.|\n)*)?/"]
        return "\n".join(rules) + "\n"

    # -- the reply -------------------------------------------------------------------------

    def parse(self, text: str):
        """(content, tool_calls) of a complete reply: tool_calls in OpenAI's shape, or None."""
        return self._parse_native(text) if self.format.native else self._parse_generic(text)

    @staticmethod
    def _parse_generic(text):
        try:
            obj = json.loads(text)
        except ValueError:
            return text, None
        call = obj.get("tool_call") if isinstance(obj, dict) else None
        if isinstance(call, dict):
            return None, [_openai_call(call.get("name"), call.get("arguments", {}))]
        if isinstance(obj, dict) and isinstance(obj.get("response"), str):
            return obj["response"], None
        return text, None

    def _parse_native(self, text):
        f = self.format
        trigger = f.prefix.rstrip()
        if trigger:
            at = text.find(trigger)
            if at < 0:
                return text, None
            content, pos = text[:at].strip(), at + len(trigger)
            pos += len(f.prefix) - len(trigger) if text.startswith(f.prefix, at) else 0
        elif text.startswith("{"):
            content, pos = "", 0
        else:
            return text, None
        calls, dec = [], json.JSONDecoder()
        while True:
            try:
                obj, pos = dec.raw_decode(text, pos)
            except ValueError:
                return text, None
            if not isinstance(obj, dict) or not isinstance(obj.get(f.name_key), str):
                return text, None
            calls.append(_openai_call(obj[f.name_key], obj.get(f.args_key) or {}))
            if text.startswith(f.suffix, pos):
                pos += len(f.suffix)
            if f.sep is None or not text.startswith(f.sep + f.prefix, pos):
                break
            pos += len(f.sep + f.prefix)
        return content or None, calls
