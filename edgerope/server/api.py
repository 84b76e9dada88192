"""The OpenAI API's shapes, without HTTP: request bodies -> scheduler Jobs, results -> response
and stream-chunk bodies, errors -> OpenAI error bodies.

Every check names the field it rejects (`ApiError(400, "temperature must be ...", param=
"temperature")`). Fields OpenAI defines that edgerope does not use are ignored, as OpenAI
ignores fields it does not know; fields that would change the answer and cannot be honoured
(`n` > 1, several prompts) are rejected.

Owns: validation, chat rendering (the model's template, as `Chat`), prompt tokenization,
response bodies. Not: the event loop or sockets (edgerope.server.app), batching (scheduler).
"""
from __future__ import annotations

import math
import time
import uuid

from edgerope.engine.sampler import SamplingParams
from edgerope.errors import EdgeropeError
from edgerope.text.conversation import encode_rendered
from edgerope.text.template import pick_template, render_chat, template_origin, template_source

__all__ = ["ApiError", "Api"]

MAX_STOP = 16            # stop strings per request
MAX_TOP_LOGPROBS = 20    # as OpenAI
_ROLES = ("system", "developer", "user", "assistant", "tool")
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                404: "not_found_error", 405: "invalid_request_error",
                413: "invalid_request_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    """An HTTP error with an OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code or ("invalid_value" if param else None)
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


def _number(body, name, default, lo, hi, *, lo_open=False):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(name, f"must be a number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        raise _bad(name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
    return float(v)


def _integer(body, name, default, lo, hi=None):
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(name, f"must be an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise _bad(name, f"must be in [{lo}, {'inf' if hi is None else hi}], got {v!r}")
    return v


def _boolean(body, name, default=False):
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _bad(name, f"must be true or false, got {v!r}")
    return v


class Api:
    """Requests for one model, served under `model_id` (the names in `aliases` too)."""

    def __init__(self, model, model_id: str, n_ctx: int, template: str | None = None):
        tok = model.tokenizer
        if tok is None:
            raise EdgeropeError("this model has no tokenizer: a server needs one")
        self.model, self.tokenizer, self.model_id, self.n_ctx = model, tok, model_id, n_ctx
        self.template = pick_template(model) if template is None else template_source(template)
        self.template_origin = template_origin(model, template)
        self.created = int(time.time())

    # -- requests -----------------------------------------------------------------------------
    def check_body(self, body) -> None:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _bad("model", f"must be a string, got {model!r}")
        if model and model != self.model_id:
            raise ApiError(404, f"The model '{model}' does not exist (this server has "
                                f"'{self.model_id}')", param="model", code="model_not_found")
        n = _integer(body, "n", 1, 1)
        if n != 1:
            raise _bad("n", "only n = 1 is supported")

    def sampling(self, body) -> SamplingParams:
        seed = body.get("seed")
        if seed is not None:
            seed = _integer(body, "seed", None, -2**63, 2**64 - 1) % 2**64
        return SamplingParams(
            temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
            top_k=_integer(body, "top_k", 40, 0),
            top_p=_number(body, "top_p", 0.95, 0.0, 1.0, lo_open=True),
            min_p=_number(body, "min_p", 0.05, 0.0, 1.0),
            repeat_penalty=_number(body, "repeat_penalty", 1.0, 0.0, 10.0, lo_open=True),
            repeat_last_n=_integer(body, "repeat_last_n", 64, -1),
            presence_penalty=_number(body, "presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0, -2.0, 2.0),
            seed=seed)

    @staticmethod
    def stops(body) -> list:
        v = body.get("stop")
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise _bad("stop", "must be a string or a list of strings")
        if len(v) > MAX_STOP:
            raise _bad("stop", f"at most {MAX_STOP} stop strings")
        return [s for s in v if s]

    @staticmethod
    def max_tokens(body, *names) -> int | None:
        for name in names:
            if body.get(name) is not None:
                return _integer(body, name, None, 1)
        return None

    def chat_prompt(self, body):
        """(token ids of the conversation rendered with the model's chat template, the
        request's Tools or None)."""
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _bad("messages", "must be a non-empty list of messages")
        out = []
        for i, m in enumerate(msgs):
            where = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _bad(where, "must be an object with role and content")
            role = m.get("role")
            if role not in _ROLES:
                raise _bad(f"{where}.role", f"must be one of {', '.join(_ROLES)}, got {role!r}")
            content = m.get("content")
            if isinstance(content, list):  # content parts: text only
                texts = []
                for j, part in enumerate(content):
                    if not isinstance(part, dict) or part.get("type") != "text" or \
                            not isinstance(part.get("text"), str):
                        raise _bad(f"{where}.content[{j}]", "only text parts are supported")
                    texts.append(part["text"])
                content = "".join(texts)
            elif content is None and role == "assistant":
                content = ""
            elif not isinstance(content, str):
                raise _bad(f"{where}.content", "must be a string or a list of text parts")
            msg = {"role": "system" if role == "developer" else role, "content": content}
            if role == "assistant" and m.get("tool_calls"):
                calls = m["tool_calls"]
                if not isinstance(calls, list) or not all(
                        isinstance(c, dict) and isinstance(c.get("function"), dict)
                        for c in calls):
                    raise _bad(f"{where}.tool_calls", "must be a list of function calls")
                msg["tool_calls"] = calls
            if role == "tool":
                msg["tool_call_id"] = m.get("tool_call_id")
            out.append(msg)
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise _bad("chat_template_kwargs", "must be an object")
        tools, tok = None, self.tokenizer
        if body.get("tools") is not None:
            from edgerope.text.tools import Tools
            try:
                tools = Tools(body["tools"], body.get("tool_choice") or "auto", self.template,
                              parallel=body.get("parallel_tool_calls", False),
                              bos_token=tok.bos_token or "", eos_token=tok.eos_token or "")
            except EdgeropeError as e:
                msg = str(e).splitlines()[0]
                raise ApiError(400, msg, param=msg.split(":")[0]) from None
            if tools.active:
                out = tools.messages(out)
                kwargs = {**kwargs, **tools.template_kwargs()}
            else:
                tools = None
        try:
            text = render_chat(self.template, out, add_generation_prompt=True,
                               origin=self.template_origin, bos_token=tok.bos_token or "",
                               eos_token=tok.eos_token or "", **kwargs)
        except EdgeropeError as e:
            raise ApiError(400, str(e).splitlines()[0], param="messages") from None
        return encode_rendered(tok, text), tools

    def completion_prompt(self, body) -> list:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]
        if isinstance(p, str):
            ids = self.tokenizer.encode(p, add_bos=None)
            if not ids:
                bos = self.tokenizer.bos_id
                ids = [bos] if bos is not None else []
            return ids
        if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool)
                                              for t in p):
            vocab = self.model.config.vocab_size
            if min(p) < 0 or max(p) >= vocab:
                raise _bad("prompt", f"token ids must be in [0, {vocab})")
            return list(p)
        raise _bad("prompt", "must be a string or a list of token ids (one prompt)")

    def check_length(self, ids) -> None:
        if not ids:
            raise _bad("prompt", "is empty (and the model has no BOS token)")
        if len(ids) >= self.n_ctx:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; a slot's context is "
                                f"{self.n_ctx} (raise -c, or lower -np)",
                           param="messages", code="context_length_exceeded")

    def constraint(self, body, tools=None):
        """The output constraint of a request (edgerope.engine.constrain): OpenAI's
        response_format (json_object, json_schema), llama-server's json_schema and grammar
        fields, the tool-call format of `tools` (edgerope.text.tools); None without one. A bad
        schema or grammar is a 400 naming it."""
        schema = grammar = None
        any_json = False
        if tools is not None:
            if any(body.get(k) is not None for k in ("json_schema", "grammar")) or \
                    (body.get("response_format") or {}).get("type", "text") != "text":
                raise _bad("tools", "cannot be combined with response_format, json_schema "
                                    "or grammar")
            from edgerope.engine.constrain import Constraint
            try:
                return Constraint.build(self.tokenizer, **tools.constraint(),
                                        vocab=self.model.config.vocab_size)
            except EdgeropeError as e:
                raise _bad("tools", str(e).splitlines()[0]) from None
        fmt = body.get("response_format")
        if fmt is not None:
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            if kind == "json_object":
                any_json = True
            elif kind == "json_schema":
                spec = fmt.get("json_schema")
                if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                    raise _bad("response_format.json_schema",
                               "must be an object with a schema")
                schema = spec.get("schema", {})
            elif kind != "text":
                raise _bad("response_format.type",
                           f"must be text, json_object or json_schema, got {kind!r}")
        for name in ("json_schema", "grammar"):
            v = body.get(name)
            if v is None:
                continue
            if schema is not None or grammar is not None or any_json:
                raise _bad(name, "give one of response_format, json_schema, grammar")
            if name == "grammar":
                if not isinstance(v, str):
                    raise _bad("grammar", "must be GBNF text")
                grammar = v
            elif not isinstance(v, dict):
                raise _bad("json_schema", "must be an object")
            else:
                schema = v
        if schema is None and grammar is None and not any_json:
            return None
        from edgerope.engine.constrain import Constraint
        try:
            return Constraint.build(self.tokenizer, json_schema=schema, grammar=grammar,
                                    any_json=any_json, vocab=self.model.config.vocab_size)
        except EdgeropeError as e:
            param = "grammar" if grammar is not None else \
                "response_format" if fmt is not None else "json_schema"
            raise ApiError(400, f"{param}: {str(e).splitlines()[0]}", param=param) from None

    @staticmethod
    def flag(body, name: str, default: bool) -> bool:
        """llama-server's switches: cache_prompt (False: evaluate the whole prompt anew,
        bit-reproducible), ignore_eos (go on past end tokens)."""
        return _boolean(body, name, default)

    @staticmethod
    def logprobs(body, chat: bool) -> int:
        """-1: none; k >= 0: each token's logprob and its k most likely alternatives."""
        if chat:
            if not _boolean(body, "logprobs"):
                if body.get("top_logprobs") is not None:
                    raise _bad("top_logprobs", "needs logprobs: true")
                return -1
            return _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
        k = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
        if k is None:
            k = _integer(body, "n_probs", 0, 0, MAX_TOP_LOGPROBS) or None  # llama.cpp's
        return -1 if k is None else k

    # -- responses ----------------------------------------------------------------------------
    @staticmethod
    def new_id(chat: bool) -> str:
        return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]

    def token_text(self, t: int) -> str:
        return self.tokenizer.decode([t])

    def logprob_content(self, entries, chat: bool):
        """OpenAI logprobs of the generated tokens (entries from the scheduler)."""
        if chat:
            return {"content": [
                {"token": self.token_text(e["token"]), "logprob": e["logprob"],
                 "bytes": list(self.token_text(e["token"]).encode("utf-8")),
                 "top_logprobs": [{"token": self.token_text(t), "logprob": lp,
                                   "bytes": list(self.token_text(t).encode("utf-8"))}
                                  for t, lp in e["top"]]} for e in entries]}
        return {"tokens": [self.token_text(e["token"]) for e in entries],
                "token_logprobs": [e["logprob"] for e in entries],
                "top_logprobs": [{self.token_text(t): lp for t, lp in e["top"]}
                                 for e in entries],
                "text_offset": []}

    def response(self, rid, chat, text, reason, usage, entries=None, calls=None) -> dict:
        lp = None if entries is None else self.logprob_content(entries, chat)
        if chat:
            message = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "logprobs": lp, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": lp, "finish_reason": reason}
        return {"id": rid, "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": self.model_id, "choices": [choice],
                "usage": usage}

    def chunk(self, rid, chat, text=None, reason=None, usage=None, entries=None,
              role=False, calls=None) -> dict:
        lp = None if entries is None else self.logprob_content(entries, chat)
        if chat:
            delta = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
            choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": lp, "finish_reason": reason}
        out = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
               "created": int(time.time()), "model": self.model_id, "choices": [choice]}
        if usage is not None:
            out["usage"] = usage
        return out

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model",
                                            "created": self.created, "owned_by": "edgerope"}]}
