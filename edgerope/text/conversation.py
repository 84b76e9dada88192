"""A conversation with one model, as a library object (`Chat`): the messages, turning them into
token ids with the chat template, what the session's KV cache holds, and what happens when the
context fills. Usable without a terminal:

    chat = Chat(model, system="Be brief.", temperature=0)
    for piece in chat.send("Hello!"):
        print(piece, end="", flush=True)

Each turn renders the *whole* conversation and tokenizes it; only the tokens after the longest
common prefix with the session's history are evaluated (as llama.cpp's server does). When the
rendering diverges from what is cached (a reply that does not re-tokenize to the sampled ids, a
cancelled reply, a template that rewrites earlier turns), the session is reset and the whole
conversation re-evaluated; `Chat.reprefills` counts those. The result is always exactly what a
fresh evaluation of the rendered conversation would give.

Owns: the messages, the template's BOS and special-token parsing (`Chat.encode`), reusing the
cached prefix across turns, the attention sinks kept when the context shifts (`keep`).
Does not own: rendering templates (edgerope.text.template), the sampling loop
(`edgerope.engine.generate.sample_tokens`), which ids end a turn (`tokenizer.eos_ids`, which
include end-of-turn tokens), how the context shifts (edgerope.engine), reading lines from a
terminal (edgerope.apps.chat).
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from edgerope.engine.cache import DEFAULT_KV_TYPE
from edgerope.engine.generate import GenerationStats, sample_tokens
from edgerope.engine.sampler import Sampler, SamplingParams
from edgerope.errors import ContextFullError, EdgeropeError, ParameterError
from edgerope.text.template import pick_template, render_chat, template_origin, template_source

__all__ = ["Chat", "encode_rendered"]


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return int(diff[0]) if len(diff) else n


def _has_stale_keys(session) -> bool:
    """True if the KV cache holds keys at or beyond session.pos, as an eval() interrupted in the
    middle of its layers leaves them (later evals would attend to them)."""
    return any(bool((c.pos >= session.pos).any()) for c in session.cache.layers)


def encode_rendered(tok, text: str) -> list[int]:
    """Token ids of a rendered chat: special tokens parsed, one BOS in front when the template
    writes it or the tokenizer adds one by default (as llama.cpp does)."""
    ids, bos, bos_text = [], tok.bos_id, tok.bos_token or ""
    if bos is not None and bos_text and text.startswith(bos_text):
        text = text[len(bos_text):]
        ids.append(bos)
    elif bos is not None and tok.add_bos_default:
        ids.append(bos)
    if not text:
        return ids
    return ids + tok.encode(text, add_bos=False, special=True)


_SAMPLING = {f for f in SamplingParams.__dataclass_fields__}
_SHOWN = 32  # prompt tokens given to the stream decoder as context (for the joining space)


class Chat:
    """A conversation with one model, keeping the KV cache between turns.

        chat = Chat(model, system="Be brief.", temperature=0)
        for piece in chat.send("Hello!"):
            print(piece, end="", flush=True)

    `template`: Jinja source, a built-in name ("gemma", "chatml", "llama3"), or None for
    `pick_template(model)`; `template_kwargs` are extra template variables (e.g.
    {"enable_thinking": False}). `n_ctx`, `n_batch` size the session. `**sampling`:
    temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed (as `generate`),
    `stop` (strings ending a reply, not shown) and `max_tokens` (per reply; None = until end
    of turn, a full context without context shift, or n_ctx tokens with it: a reply longer
    than the whole context is a runaway). `kv_type`, `keep` (attention sinks kept when the
    context shifts; -1 = the system prompt and the first turn's header), `context_shift`
    configure the session. One sampler (one random stream) serves the whole conversation, so
    a seed makes a whole chat reproducible. `tools`, `tool_choice`: see `set_tools`.

    Attributes: `messages` (the conversation, system prompt first if any; a reply is recorded
    as the text that was streamed), `stats` (GenerationStats of the last turn; `n_prompt` counts
    only the tokens that turn evaluated), `reprefills` (times the cached history could not be
    reused and the whole conversation was evaluated again), `session`.
    """

    def __init__(self, model, system: str | None = None, n_ctx: int | None = None,
                 template: str | None = None, *, n_batch: int = 512,
                 template_kwargs: dict | None = None, kv_type: str = DEFAULT_KV_TYPE,
                 keep: int = -1, context_shift: bool = True, tools=None,
                 tool_choice="auto", parallel_tool_calls: bool = False, **sampling):
        tok = model.tokenizer
        if tok is None:
            raise EdgeropeError("this model has no tokenizer: chat needs one")
        unknown = set(sampling) - _SAMPLING - {"stop", "max_tokens"}
        if unknown:
            raise TypeError("Chat() got unexpected keyword argument(s): "
                            f"{', '.join(sorted(unknown))}")
        self.model, self.tokenizer, self.system = model, tok, system
        self.template = template_source(template) if template is not None \
            else pick_template(model)
        self.template_origin = template_origin(model, template)
        self.template_kwargs = dict(template_kwargs or {})
        # the texts a template writes for bos_token / eos_token ("<bos>", "<|im_end|>")
        self._bos_text = tok.bos_token or ""
        self._eos_text = tok.eos_token or ""
        self.tool_calls = None  # the last reply's calls (OpenAI's shape), or None
        self.set_tools(tools, tool_choice, parallel_tool_calls)
        self._params = SamplingParams(**{k: v for k, v in sampling.items() if k in _SAMPLING})
        self._params.validate()
        self._stop = list(sampling.get("stop") or [])
        self._max_tokens = self._check_max_tokens(sampling.get("max_tokens"))
        self._sampler = Sampler(self._params)
        if keep < -1:
            raise ParameterError(f"keep must be >= 0, or -1 for the system prompt; got {keep}")
        self.session = model.new_session(n_ctx=n_ctx, n_batch=n_batch, kv_type=kv_type,
                                         context_shift=context_shift)
        self._history: list[int] = []  # every token the session has evaluated, in order
        self.messages: list[dict] = []
        self.stats = GenerationStats()
        self.reprefills = 0
        self._dirty = False  # the cache may hold keys the history does not: start over next turn
        self._busy = False
        self._reused = 0
        self.reset()
        # fail now, not at the first reply, on a template that cannot render a conversation
        first = self.encode(self.render(self.messages + [{"role": "user", "content": "Hi"}]))
        if keep == -1:  # the system prompt (and the first turn's header): what two first
            # turns have in common
            other = self.encode(self.render(self.messages + [{"role": "user", "content": "Yo"}]))
            keep = _common_prefix(first, other)
        self.session.set_keep(min(keep, self.session.n_ctx // 2))

    def set_tools(self, tools=None, tool_choice="auto", parallel_tool_calls: bool = False) -> None:
        """Tools (OpenAI's `tools` list) the next replies may call (edgerope.text.tools):
        each reply is then constrained to the template's own tool-call format (or the
        generic JSON one) -- a call is recorded in `tool_calls` and in the assistant
        message, text comes out whole at the end of the reply; `send_tool_result` gives a
        call's result back. `parallel_tool_calls`: a reply may hold several calls, where the
        format writes them. None: plain replies."""
        self.tools = self._constraint = None
        self.template_kwargs.pop("tools", None)
        if not tools:
            return
        from edgerope.engine.constrain import Constraint
        from edgerope.text.tools import Tools
        self.tools = Tools(tools, tool_choice, self.template, parallel=parallel_tool_calls,
                           bos_token=self._bos_text, eos_token=self._eos_text)
        if self.tools.active:
            self._constraint = Constraint.build(self.tokenizer, **self.tools.constraint(),
                                                vocab=self.model.config.vocab_size)
            self.template_kwargs.update(self.tools.template_kwargs())

    @property
    def n_ctx(self) -> int:
        return self.session.n_ctx

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays) and clear the KV cache."""
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.session.reset()
        self._history = []
        self._dirty = False

    def render(self, messages=None, add_generation_prompt: bool = True) -> str:
        """The conversation (default: `messages`) as the template writes it."""
        messages = self.messages if messages is None else messages
        if self._constraint is not None:
            messages = self.tools.messages(messages)
        return render_chat(self.template, messages,
                           add_generation_prompt=add_generation_prompt,
                           origin=self.template_origin,
                           bos_token=self._bos_text, eos_token=self._eos_text,
                           **self.template_kwargs)

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text (`encode_rendered`)."""
        return encode_rendered(self.tokenizer, text)

    @staticmethod
    def _check_max_tokens(n):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ParameterError(f"max_tokens must be a positive integer or None (no limit), got {n!r}")
        return n

    def send(self, user_text: str, max_tokens: int | None = None, **sampling_overrides):
        """Add a user turn and stream the reply: an iterator of text pieces.

        Work happens while iterating. When the iterator is exhausted the reply is recorded in
        `messages`; if it is abandoned (closed early, Ctrl-C, an error) neither the user turn
        nor the partial reply is kept. `max_tokens` None = the chat's default. Raises
        ContextFullError (while iterating) if the conversation no longer fits in the context.
        """
        unknown = set(sampling_overrides) - _SAMPLING - {"stop"}
        if unknown:
            raise TypeError("send() got unexpected keyword argument(s): "
                            f"{', '.join(sorted(unknown))}")
        max_tokens = self._check_max_tokens(max_tokens) or self._max_tokens
        if max_tokens is None and self.session.context_shift:
            max_tokens = self.session.n_ctx
        stop = list(sampling_overrides.pop("stop", None) or self._stop)
        sampler = self._sampler
        if sampling_overrides:
            params = replace(self._params, **sampling_overrides)
            params.validate()
            sampler = Sampler(params)
        return self._turn({"role": "user", "content": str(user_text)}, sampler, max_tokens,
                          stop)

    def send_tool_result(self, tool_call_id: str, content: str, max_tokens: int | None = None):
        """Give the result of a tool the last reply called (`tool_calls`) and stream the
        next reply, as `send` does."""
        if not self.messages or not self.messages[-1].get("tool_calls") and \
                self.messages[-1]["role"] != "tool":
            raise ParameterError("send_tool_result: the last reply called no tool")
        max_tokens = self._check_max_tokens(max_tokens) or self._max_tokens
        if max_tokens is None and self.session.context_shift:
            max_tokens = self.session.n_ctx
        return self._turn({"role": "tool", "tool_call_id": tool_call_id,
                           "content": str(content)}, self._sampler, max_tokens, self._stop)

    def _turn(self, message, sampler, max_tokens, stop):
        if self._busy:
            raise RuntimeError("Chat.send: the previous reply is still streaming; "
                               "exhaust or close() it first")
        self._busy = True
        t_start = time.perf_counter()
        n_before = len(self.messages)
        self.messages.append(message)
        self.stats = stats = GenerationStats()
        self.tool_calls = None
        pieces: list[str] = []
        done = False
        guide = None if self._constraint is None else self._constraint.start()
        try:
            ids = self.encode(self.render())
            logits = self._prefill(ids)
            stats.n_prompt = len(ids) - self._reused
            stats.prompt_seconds = time.perf_counter() - t_start
            evaluated = self._evaluated()
            try:
                for piece in sample_tokens(self.model, self.session, logits, sampler,
                                           max_tokens=max_tokens, stop=stop, stats=stats,
                                           t_start=t_start, shown=ids[-_SHOWN:], guide=guide):
                    pieces.append(piece)
                    if guide is None:
                        yield piece
            finally:  # the sampled tokens the session evaluated (all but the last)
                self._history += stats.token_ids[:self._evaluated() - evaluated]
            reply = {"role": "assistant", "content": "".join(pieces)}
            if guide is not None:  # a JSON reply: a tool call, or the text for the user
                content, calls = self.tools.parse(reply["content"]) \
                    if not stats.incomplete else (reply["content"], None)
                reply = {"role": "assistant", "content": content}
                if calls:
                    reply["tool_calls"] = self.tool_calls = calls
                elif content:
                    yield content
            done = True
        finally:
            if done:
                self.messages.append(reply)
            else:
                del self.messages[n_before:]
                if _has_stale_keys(self.session) or len(self._history) != self._evaluated():
                    self._dirty = True  # interrupted mid-prompt: the cache is not the history
            self._busy = False

    def _evaluated(self) -> int:
        """Tokens the session has evaluated since its reset (shifted-out ones included)."""
        return self.session.pos + self.session.n_shifted

    def _prefill(self, ids) -> np.ndarray:
        """Bring the session to `ids`, evaluating only what is not cached; last-token logits.

        What is cached is `_history` (every token evaluated since the reset); after context
        shifts the session holds only its sinks and its tail, and evaluating more simply
        shifts again, so old turns fall out of the window while the sinks (the system
        prompt with keep=-1) stay."""
        sess = self.session
        if len(ids) > sess.n_ctx and not sess.context_shift:
            raise ContextFullError(f"context full: the conversation is {len(ids)} tokens, the "
                                   f"context {sess.n_ctx} (/reset, or raise --ctx-size)")
        n = _common_prefix(self._history, ids)
        if self._dirty or n < len(self._history) or n == len(ids):
            if sess.pos:
                self.reprefills += 1
            sess.reset()
            self._history = []
            self._dirty = False
            n = 0
        self._reused = n
        self._history += ids[n:]
        return sess.eval(ids[n:])

