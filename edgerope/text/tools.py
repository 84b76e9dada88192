"""Tool calls (OpenAI's `tools`) for any chat model, in llama.cpp's "generic" format: the
reply is constrained (edgerope.engine.constrain) to one JSON object, either

    {"tool_call": {"name": "<one of the tools>", "arguments": {<that tool's parameters>}}}
or  {"response": "<text for the user>"}

so a call always names a real tool with arguments that match its schema, whatever the model
was trained on. The conversation goes to the chat template with a system instruction saying
so and listing the tools (and `tools=` for templates that use them); assistant turns are
written back as the JSON the model produced (so a cached prefix stays valid), and `tool`
messages (the results) as a user turn `{"tool_response": ...}`, which every template
accepts.

Owns: checking `tools` / `tool_choice`, the messages the template sees, the reply's schema,
parsing a reply into OpenAI's message. Not: rendering, sampling, HTTP.
"""
from __future__ import annotations

import json
import uuid

from edgerope.errors import ParameterError

__all__ = ["Tools"]

INSTRUCTION = ("Respond in JSON format, either with `tool_call` (a request to call tools) or "
               "with `response` reply to the user's request")


def _compact(obj) -> str:
    """JSON as the constrained replies are written (no spaces, UTF-8 as is)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class Tools:
    """The `tools` and `tool_choice` of a request (OpenAI's shapes), checked."""

    def __init__(self, tools, choice="auto"):
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

    @property
    def active(self) -> bool:
        return self.choice != "none"

    def schema(self) -> dict:
        """The JSON schema of the reply."""
        calls = [{"type": "object", "properties": {
            "name": {"const": f["name"]}, "arguments": f["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False}
            for f in self.functions if self.forced in (None, f["name"])]
        call = {"type": "object", "properties": {"tool_call": {"anyOf": calls}},
                "required": ["tool_call"], "additionalProperties": False}
        if self.choice == "required":
            return call
        reply = {"type": "object", "properties": {"response": {"type": "string"}},
                 "required": ["response"], "additionalProperties": False}
        return {"anyOf": [call, reply]}

    def messages(self, messages: list, template_has_tools: bool) -> list:
        """What the template renders: the instruction and the tools in the system message,
        earlier calls as their JSON, results as user turns."""
        tools_text = json.dumps([{"type": "function", "function": f}
                                 for f in self.functions], ensure_ascii=False)
        note = INSTRUCTION if template_has_tools else \
            f"{INSTRUCTION}.\n\nAvailable tools:\n{tools_text}"
        out = []
        for m in messages:
            role = m["role"]
            if role == "assistant" and m.get("tool_calls"):
                calls = m["tool_calls"]
                f = calls[0].get("function") or {}
                try:
                    args = json.loads(f.get("arguments") or "{}")
                except ValueError:
                    raise ParameterError("messages: a tool call's arguments are not JSON") \
                        from None
                out.append({"role": "assistant", "content": _compact(
                    {"tool_call": {"name": f.get("name"), "arguments": args}})})
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

    @staticmethod
    def parse(text: str):
        """(content, tool_calls) of a complete reply: tool_calls in OpenAI's shape, or None."""
        try:
            obj = json.loads(text)
        except ValueError:
            return text, None
        call = obj.get("tool_call") if isinstance(obj, dict) else None
        if isinstance(call, dict):
            return None, [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                           "function": {"name": call.get("name"), "arguments": json.dumps(
                               call.get("arguments", {}), ensure_ascii=False)}}]
        if isinstance(obj, dict) and isinstance(obj.get("response"), str):
            return obj["response"], None
        return text, None
