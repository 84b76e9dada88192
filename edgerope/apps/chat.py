"""Multi-turn chat: chat templates (Jinja2, sandboxed), a conversation that keeps its KV cache
between turns, and the read-reply loop behind `edgerope chat`.

Owns: rendering a conversation to text (`render_chat`, the built-in fallback templates,
`pick_template`), turning it into token ids (the template's BOS, special-token parsing), reusing
the cached prefix across turns (`Chat`), and the terminal loop (`run_chat`).

Each turn renders the *whole* conversation and tokenizes it; only the tokens after the longest
common prefix with the session's history are evaluated (as llama.cpp's server does). When the
rendering diverges from what is cached (a reply that does not re-tokenize to the sampled ids, a
cancelled reply, a template that rewrites earlier turns), the session is reset and the whole
conversation re-evaluated; `Chat.reprefills` counts those. The result is always exactly what a
fresh evaluation of the rendered conversation would give.

Does not own: the sampling loop (`edgerope.engine.generate.sample_tokens`), which ids end a turn
(`tokenizer.eos_ids`, which include end-of-turn tokens), context shifting.
"""
from __future__ import annotations

import builtins
import functools
import json
import re
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime

import jinja2
import numpy as np
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter

from edgerope.engine.cache import DEFAULT_KV_TYPE
from edgerope.errors import ContextFullError, EdgeropeError
from edgerope.engine.generate import GenerationStats, sample_tokens
from edgerope.engine.sampler import Sampler, SamplingParams

__all__ = ["TEMPLATES", "render_chat", "pick_template", "Chat", "run_chat"]

# Built-in templates for models whose files carry none, written as the models' own
# tokenizer_config.json templates are (same output, text content only where noted).
TEMPLATES = {
    # google/gemma-3-*-it: no system role; the system prompt + "\n\n" opens the first user turn.
    "gemma": (
        "{{ bos_token }}\n"
        "{%- if messages[0]['role'] == 'system' -%}\n"
        "    {%- if messages[0]['content'] is string -%}\n"
        "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
        "    {%- else -%}\n"
        "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
        "    {%- endif -%}\n"
        "    {%- set loop_messages = messages[1:] -%}\n"
        "{%- else -%}\n"
        "    {%- set first_user_prefix = \"\" -%}\n"
        "    {%- set loop_messages = messages -%}\n"
        "{%- endif -%}\n"
        "{%- for message in loop_messages -%}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
        "        {{ raise_exception(\"Conversation roles must alternate "
        "user/assistant/user/assistant/...\") }}\n"
        "    {%- endif -%}\n"
        "    {%- if (message['role'] == 'assistant') -%}\n"
        "        {%- set role = \"model\" -%}\n"
        "    {%- else -%}\n"
        "        {%- set role = message['role'] -%}\n"
        "    {%- endif -%}\n"
        "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
        "    {%- if message['content'] is string -%}\n"
        "        {{ message['content'] | trim }}\n"
        "    {%- elif message['content'] is iterable -%}\n"
        "        {%- for item in message['content'] -%}\n"
        "            {%- if item['type'] == 'image' -%}\n"
        "                {{ '<start_of_image>' }}\n"
        "            {%- elif item['type'] == 'text' -%}\n"
        "                {{ item['text'] | trim }}\n"
        "            {%- endif -%}\n"
        "        {%- endfor -%}\n"
        "    {%- else -%}\n"
        "        {{ raise_exception(\"Invalid content type\") }}\n"
        "    {%- endif -%}\n"
        "    {{ '<end_of_turn>\\n' }}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "    {{'<start_of_turn>model\\n'}}\n"
        "{%- endif -%}\n"
    ),
    # Gemma 4: turns as <|turn>role ... <turn|>, a system turn of its own, the reply opened
    # with <|turn>model (the format of google/gemma-4 checkpoints' own templates, text only).
    "gemma4": (
        "{{ bos_token }}"
        "{%- for message in messages -%}"
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
        "{{ '<|turn>' + role + '\n' }}"
        "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
        "{%- else -%}{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
        "{{ '<turn|>\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|turn>model\n' }}{%- endif -%}"
    ),
    # ChatML (Qwen, many fine-tunes): every role verbatim, no BOS.
    "chatml": (
        "{% for message in messages %}"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama3": (
        "{% set loop_messages = messages %}"
        "{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
        "{{ content }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
        "{% endif %}"
    ),
}



# -- rendering ---------------------------------------------------------------------------------

class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (Hugging Face's assistant-mask marker): renders
    its body unchanged, so templates written for training still load."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller):
        return caller()


# A template is input (a GGUF key, a tokenizer_config.json field): bound what rendering it may
# cost. Conversations render in milliseconds; these bounds only stop runaway templates.
MAX_RENDER_SECONDS = 5.0
MAX_RENDER_CHARS = 1 << 20  # or 8x the size of the messages and variables, if more


_render_state = threading.local()  # this thread's size bound while it renders


class RenderLimit(Exception):
    """Raised inside a template that exceeds its time or size bound."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """Hugging Face's template environment, failing loudly on unsafe attribute access (the stock
    sandbox returns an undefined value that renders as an empty string), and bounding what a
    single operation may build: `*`, `+`, `**`, `%` and the string methods and filters whose
    result size is an argument (center, ljust, replace, join, format, indent, ...) are checked
    before they run; captured blocks (`{% set x %}...`) are checked as they are joined. The
    bound is `_limit` characters (set per render by `_bounded`)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    @property
    def _limit(self) -> int:
        return getattr(_render_state, "limit", MAX_RENDER_CHARS)

    def unsafe_undefined(self, obj, attribute):
        raise jinja2.sandbox.SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

    def _check(self, n):
        if n > self._limit:
            raise RenderLimit(f"an expression would build {n} characters or items "
                              f"(limit {self._limit})")

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for a, b in ((left, right), (right, left)):
                if isinstance(a, (str, list, tuple)) and isinstance(b, int):
                    self._check(len(a) * b)
        elif operator == "+" and isinstance(left, (str, list, tuple)) \
                and isinstance(right, (str, list, tuple)):
            self._check(len(left) + len(right))
        elif operator == "**" and isinstance(left, (int, float)) and isinstance(right, int) \
                and abs(right) > 64 and abs(left) > 1:
            raise RenderLimit(f"{left!r} ** {right} is too large")
        elif operator == "%" and isinstance(left, str):
            self._check_widths(left)
        return super().call_binop(context, operator, left, right)

    def _check_widths(self, fmt: str):
        """Field widths and precisions in a %- or {}-format string."""
        for m in _WIDTHS.finditer(fmt):
            self._check(int(next(g for g in m.groups() if g)))

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's signature
        owner = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(owner, str):
            if name in ("center", "ljust", "rjust", "zfill") and args \
                    and isinstance(args[0], int):
                __self._check(args[0])
            elif name == "expandtabs" and args and isinstance(args[0], int):
                __self._check(len(owner) + owner.count("\t") * args[0])
            elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
                __self._check(len(owner) + (len(owner) + 1) * len(args[1]))
            elif name == "join" and args:
                __self._check(_joined_size(owner, args[0]))
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value):
        """str.format / format_map through a formatter that checks each field's final spec
        (widths may come from the arguments: "{0:>{1}}")."""
        inner = super().wrap_str_format(value)
        if inner is None or type(value.__self__) is not str:
            return inner
        text, formatter = value.__self__, _Formatter(self)
        if value.__name__ == "format_map":
            return lambda mapping: formatter.vformat(text, (), mapping)
        return lambda *args, **kwargs: formatter.vformat(text, args, kwargs)


class _Formatter(SandboxedFormatter):
    def format_field(self, value, format_spec):
        self._env._check_widths("{:" + format_spec + "}")
        return super().format_field(value, format_spec)


_WIDTHS = re.compile(r"%[-#0 +]*(\d+)|%[-#0 +]*\d*\.(\d+)|\{[^{}]*:\D*(\d+)[^{}]*\}")


def _joined_size(sep, items) -> int:
    try:
        items = list(items)
    except TypeError:
        return 0
    return len(sep) * max(len(items) - 1, 0) + sum(len(x) if isinstance(x, str) else 32
                                                    for x in items)


def _bounded_filters(env):
    """Wrap the filters whose output size is an argument with a check before they run."""
    f = env.filters

    def wrap(name, size):
        inner = f[name]

        @functools.wraps(inner)
        def checked(*args, **kwargs):
            env._check(size(*args, **kwargs))
            return inner(*args, **kwargs)
        f[name] = checked

    def text(v):
        return str(v) if not isinstance(v, str) else v

    wrap("center", lambda v, width=80: max(len(text(v)), int(width)))
    wrap("indent", lambda v, width=4, *a, **k: len(text(v)) * (1 + (
        int(width) if isinstance(width, int) else len(str(width)))) + 1)
    wrap("replace", lambda *a, **k: 0 if len(a) < 4 else len(text(a[1])) + (
        len(text(a[1])) + 1) * len(text(a[3])))
    wrap("join", lambda *a, **k: 0 if len(a) < 3 else _joined_size(text(a[2]), a[1]))
    wrap("format", lambda v, *a, **k: _check_format(env, text(v)))
    wrap("wordwrap", lambda *a, **k: 2 * len(text(a[1])) if len(a) > 1 else 0)


def _check_format(env, fmt) -> int:
    env._check_widths(fmt)
    return len(fmt)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True,
                   extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    _bounded_filters(env)

    def concat(parts):  # a captured block ({% set x %}...{% endset %}, macros, call blocks)
        parts = list(parts)
        env._check(sum(map(len, parts)))
        return "".join(parts)
    env.concat = concat
    return env


class _Deadline:
    """Raise RenderLimit inside template code once `seconds` have passed: a line tracer on the
    frames of compiled templates (filename "<template>") only, on this thread only. Skipped
    when a tracer is already installed (a debugger, coverage), so as not to displace it."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __enter__(self):
        self.active = sys.gettrace() is None
        if self.active:
            self.end = time.monotonic() + self.seconds
            sys.settrace(self._call)
        return self

    def __exit__(self, *exc):
        if self.active:
            sys.settrace(None)

    def _call(self, frame, event, arg):
        return self._line if frame.f_code.co_filename == "<template>" else None

    def _line(self, frame, event, arg):
        if time.monotonic() > self.end:
            raise RenderLimit(f"rendering took more than {self.seconds:g} s")
        return self._line


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


@functools.lru_cache(maxsize=16)
def _compile(source: str, origin: str):
    try:
        return _env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise EdgeropeError(f"{origin}: syntax error on line {e.lineno}: "
                            f"{_one_line(e)}") from None
    except jinja2.TemplateError as e:
        raise EdgeropeError(f"{origin}: {_one_line(e)}") from None
    except (RenderLimit, RecursionError, MemoryError) as e:  # constant folding at compile time
        raise EdgeropeError(f"{origin}: {_one_line(e)}") from None


def _source(template: str) -> str:
    """A built-in template's source by name, else `template` itself (Jinja source)."""
    if not isinstance(template, str):
        raise EdgeropeError(f"chat template must be a string, got {type(template).__name__}")
    return TEMPLATES.get(template, template)


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", *, origin: str | None = None,
                **kwargs) -> str:
    """Render `messages` ([{"role": ..., "content": ...}, ...]) with a Jinja chat template, as
    transformers' `apply_chat_template(tokenize=False)` does: sandboxed (immutable) environment,
    trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, `tojson`, loop controls.
    `template` is Jinja source or a name in TEMPLATES. Extra keyword arguments are passed to the
    template (e.g. `tools`). Any failure raises a one-line EdgeropeError starting with `origin`
    (where the template came from: "model.gguf: tokenizer.chat_template"; default "chat
    template"). Bounded: MAX_RENDER_SECONDS of template code, and MAX_RENDER_CHARS (or 8x the
    size of the input, if more) for the output and for anything one expression builds."""
    origin = origin or "chat template"
    tmpl = _compile(_source(template), origin)
    variables = dict(messages=messages, add_generation_prompt=add_generation_prompt,
                     bos_token=bos_token, eos_token=eos_token, **kwargs)
    limit = max(MAX_RENDER_CHARS, 8 * len(repr(variables)))
    _render_state.limit = limit
    out, size = [], 0
    try:
        with _Deadline(MAX_RENDER_SECONDS):
            for chunk in tmpl.generate(**variables):
                size += len(chunk)
                if size > limit:
                    raise RenderLimit(f"renders more than {limit} characters")
                out.append(chunk)
    except RenderLimit as e:
        raise EdgeropeError(f"{origin}: {e}") from None
    except jinja2.TemplateError as e:
        raise EdgeropeError(f"{origin}: {_one_line(e)}") from None
    except (RecursionError, MemoryError):
        raise EdgeropeError(f"{origin}: too deep or too large to render") from None
    except Exception as e:  # a template is input: whatever breaks in it is the input's fault
        raise EdgeropeError(f"{origin}: {type(e).__name__}: {_one_line(e)}") from None
    finally:
        _render_state.limit = MAX_RENDER_CHARS
    return "".join(out)


def pick_template(model) -> str:
    """The model's own chat template (`tokenizer.chat_template`) if it has one, else a built-in
    the architecture's built-in one (edgerope.archs: Gemma -> "gemma", most -> "chatml").
    Returns Jinja source."""
    tmpl = getattr(model.tokenizer, "chat_template", None)
    if isinstance(tmpl, (list, tuple)):  # named templates, as tokenizer_config.json allows
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default")
    elif isinstance(tmpl, dict):
        tmpl = tmpl.get("default")
    if isinstance(tmpl, str) and tmpl.strip():
        return tmpl
    from edgerope import archs
    arch = archs.find(getattr(model.config, "model_type", ""))
    return TEMPLATES[arch.chat_template if arch is not None else "chatml"]


def template_origin(model, template: str | None = None) -> str:
    """Where the template `Chat` uses comes from, for error messages: the file and key of the
    model's own template, "built-in chat template 'gemma'", or "chat template" (given)."""
    if template is not None:
        return f"built-in chat template {template!r}" if template in TEMPLATES \
            else "chat template"
    source = pick_template(model)
    for name, text in TEMPLATES.items():
        if source is text:
            return f"built-in chat template {name!r}"
    return getattr(model.tokenizer, "chat_template_origin", None) or "chat template"


# -- tokens ------------------------------------------------------------------------------------

def _piece(tok, i) -> str:
    """The text of token `i` as a template writes it ("<bos>", "<s>"), or "" if unknown."""
    if i is None:
        return ""
    for name in ("token_text", "id_to_piece", "token_to_piece"):
        f = getattr(tok, name, None)
        if callable(f):
            try:
                return str(f(int(i)))
            except Exception:  # noqa: BLE001 - a best-effort lookup
                pass
    sp = getattr(tok, "sp", None)
    if sp is not None:
        try:
            return sp.id_to_piece(int(i))
        except Exception:  # noqa: BLE001
            pass
    return ""


def _special_text(tok, attr: str, fallback_id) -> str:
    text = getattr(tok, attr, None)
    if isinstance(text, str):
        return text
    return _piece(tok, fallback_id)


def _common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n], np.int64) != np.asarray(b[:n], np.int64))
    return int(diff[0]) if len(diff) else n


def _has_stale_keys(session) -> bool:
    """True if the KV cache holds keys at or beyond session.pos, as an eval() interrupted in the
    middle of its layers leaves them (later evals would attend to them)."""
    try:
        return any(bool((c.pos >= session.pos).any()) for c in session.cache.layers)
    except AttributeError:  # a cache without per-slot positions: assume the worst
        return True


_SAMPLING = {f for f in SamplingParams.__dataclass_fields__}
_SHOWN = 32  # prompt tokens given to the stream decoder as context (for the joining space)


# -- the conversation --------------------------------------------------------------------------

class Chat:
    """A conversation with one model, keeping the KV cache between turns.

        chat = Chat(model, system="Be brief.", temperature=0)
        for piece in chat.send("Hello!"):
            print(piece, end="", flush=True)

    `template`: Jinja source, a built-in name ("gemma", "chatml", "llama3"), or None for
    `pick_template(model)`; `template_kwargs` are extra template variables (e.g.
    {"enable_thinking": False}). `n_ctx`, `n_batch` size the session. `**sampling`: temperature, top_k, top_p, min_p, repeat_penalty,
    repeat_last_n, seed (as `generate`), `stop` (strings ending a reply, not shown) and
    `max_tokens` (per reply; None = until end of turn, a full context without context
    shift, or n_ctx tokens with it: a reply longer than the whole context is a runaway).
    `kv_type`, `keep` (attention sinks kept when the context shifts; -1 = the system prompt
    and the first turn's header), `context_shift` configure the session. One sampler (one
    random stream) serves the whole conversation, so a seed makes a whole chat reproducible.

    Attributes: `messages` (the conversation, system prompt first if any; a reply is recorded
    as the text that was streamed), `stats` (GenerationStats of the last turn; `n_prompt` counts
    only the tokens that turn evaluated), `reprefills` (times the cached history could not be
    reused and the whole conversation was evaluated again), `session`.
    """

    def __init__(self, model, system: str | None = None, n_ctx: int | None = None,
                 template: str | None = None, *, n_batch: int = 512,
                 template_kwargs: dict | None = None, kv_type: str = DEFAULT_KV_TYPE,
                 keep: int = -1, context_shift: bool = True, **sampling):
        tok = model.tokenizer
        if tok is None:
            raise EdgeropeError("this model has no tokenizer: chat needs one")
        unknown = set(sampling) - _SAMPLING - {"stop", "max_tokens"}
        if unknown:
            raise TypeError(f"Chat() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        self.model, self.tokenizer, self.system = model, tok, system
        self.template = _source(template) if template is not None else pick_template(model)
        self.template_origin = template_origin(model, template)
        self.template_kwargs = dict(template_kwargs or {})
        self._params = SamplingParams(**{k: v for k, v in sampling.items() if k in _SAMPLING})
        self._params.validate()
        self._stop = list(sampling.get("stop") or [])
        self._max_tokens = self._check_max_tokens(sampling.get("max_tokens"))
        self._sampler = Sampler(self._params)
        self._bos_text = _special_text(tok, "bos_token", tok.bos_id)
        sp = getattr(tok, "sp", None)
        eos_id = sp.eos_id() if sp is not None and sp.eos_id() >= 0 else min(tok.eos_ids, default=None)
        self._eos_text = _special_text(tok, "eos_token", eos_id)
        self._special = True  # does tok.encode take special=? (until tried)
        if keep < -1:
            raise ValueError(f"keep must be >= 0, or -1 for the system prompt; got {keep}")
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
        return render_chat(self.template, self.messages if messages is None else messages,
                           add_generation_prompt=add_generation_prompt,
                           origin=self.template_origin,
                           bos_token=self._bos_text, eos_token=self._eos_text,
                           **self.template_kwargs)

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text: special tokens parsed, one BOS in front when the template
        writes it or the tokenizer adds one by default (as llama.cpp does)."""
        tok, ids = self.tokenizer, []
        bos = tok.bos_id
        if bos is not None and self._bos_text and text.startswith(self._bos_text):
            text = text[len(self._bos_text):]
            ids.append(bos)
        elif bos is not None and tok.add_bos_default:
            ids.append(bos)
        if not text:
            return ids
        if self._special:
            try:
                return ids + list(tok.encode(text, add_bos=False, special=True))
            except TypeError:  # a tokenizer without special-token parsing yet
                self._special = False
        return ids + list(tok.encode(text, add_bos=False))

    @staticmethod
    def _check_max_tokens(n):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"max_tokens must be a positive integer or None (no limit), got {n!r}")
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
            raise TypeError(f"send() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        max_tokens = self._check_max_tokens(max_tokens) or self._max_tokens
        if max_tokens is None and self.session.context_shift:
            max_tokens = self.session.n_ctx
        stop = list(sampling_overrides.pop("stop", None) or self._stop)
        sampler = self._sampler
        if sampling_overrides:
            params = replace(self._params, **sampling_overrides)
            params.validate()
            sampler = Sampler(params)
        return self._turn(str(user_text), sampler, max_tokens, stop)

    def _turn(self, user_text, sampler, max_tokens, stop):
        if self._busy:
            raise RuntimeError("Chat.send: the previous reply is still streaming; "
                               "exhaust or close() it first")
        self._busy = True
        t_start = time.perf_counter()
        n_before = len(self.messages)
        self.messages.append({"role": "user", "content": user_text})
        self.stats = stats = GenerationStats()
        pieces: list[str] = []
        done = False
        try:
            ids = self.encode(self.render())
            logits = self._prefill(ids)
            stats.n_prompt = len(ids) - self._reused
            stats.prompt_seconds = time.perf_counter() - t_start
            evaluated = self._evaluated()
            try:
                for piece in sample_tokens(self.model, self.session, logits, sampler,
                                           max_tokens=max_tokens, stop=stop, stats=stats,
                                           t_start=t_start, shown=ids[-_SHOWN:]):
                    pieces.append(piece)
                    yield piece
            finally:  # the sampled tokens the session evaluated (all but the last)
                self._history += stats.token_ids[:self._evaluated() - evaluated]
            done = True
        finally:
            if done:
                self.messages.append({"role": "assistant", "content": "".join(pieces)})
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


# -- the terminal loop -------------------------------------------------------------------------

def _clean_line(line: str, encoding: str | None) -> str:
    """`line` with the lone surrogates of undecodable bytes (errors="surrogateescape")
    replaced by U+FFFD, one per bad byte sequence as a replacing decode gives."""
    try:
        line.encode("utf-8")
        return line
    except UnicodeEncodeError:
        pass
    enc = encoding or "utf-8"
    try:
        return line.encode(enc, "surrogateescape").decode(enc, "replace")
    except (UnicodeError, LookupError):
        return line.encode("utf-8", "replace").decode("utf-8")


def run_chat(model, system: str | None = None, input=None, output=None, err=None,
             interactive: bool | None = None, **sampling) -> int:
    """The loop behind `edgerope chat`: one user turn per line of `input`, replies streamed to
    `output` (each followed by a newline), messages on `err`. Streams default to sys.stdin,
    sys.stdout, sys.stderr; `interactive` defaults to whether input is a terminal, and then a
    "> " prompt is shown. `**sampling` goes to `Chat` (n_ctx, template, n_batch, max_tokens,
    temperature, ...).

    Commands: /reset (forget the conversation), /exit; end of input (Ctrl-D) quits. Ctrl-C
    during a reply cancels it (the turn is forgotten) and returns to the prompt; Ctrl-C at the
    prompt quits. Blank lines are skipped. Returns 0.
    """
    input = sys.stdin if input is None else input
    output = sys.stdout if output is None else output
    err = sys.stderr if err is None else err
    if input is sys.stdin:
        # bytes that are not valid in the terminal's encoding arrive as lone surrogates
        # (instead of an exception ending the chat); `_clean_line` turns them into U+FFFD
        try:
            input.reconfigure(errors="surrogateescape")
        except (AttributeError, ValueError, OSError):
            pass
    if interactive is None:
        try:
            interactive = bool(input.isatty())
        except (AttributeError, ValueError, OSError):
            interactive = False
    # the real terminal: builtins.input gives line editing (when readline is loaded)
    use_builtin = interactive and input is sys.stdin and output is sys.stdout
    if use_builtin:
        try:
            import readline  # noqa: F401 - line editing and history for builtins.input
        except ImportError:
            pass
    chat = Chat(model, system=system, **sampling)

    def say(stream, text):
        stream.write(text)
        stream.flush()

    def raw_line() -> str:
        if use_builtin:
            try:
                return builtins.input("> ") + "\n"
            except EOFError:
                return ""
        if interactive:
            say(output, "> ")
        return input.readline()

    n_lines = 0

    def read_line() -> str:
        nonlocal n_lines
        line = raw_line()
        n_lines += 1
        clean = _clean_line(line, getattr(input, "encoding", None))
        if clean != line:
            enc = (getattr(input, "encoding", None) or "utf-8").upper()
            say(err, f"warning: stdin line {n_lines}: not valid {enc}; invalid bytes replaced "
                     f"by U+FFFD\n")
        return clean

    while True:
        try:
            line = read_line()
        except KeyboardInterrupt:
            say(output, "\n")
            return 0
        if not line:  # end of input
            if interactive:
                say(output, "\n")
            return 0
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            return 0
        if command == "/reset":
            chat.reset()
            say(err, "conversation reset\n")
            continue
        reply = chat.send(text)
        try:
            for piece in reply:
                say(output, piece)
        except KeyboardInterrupt:
            reply.close()
            say(output, "\n")
            continue
        except EdgeropeError as e:
            reply.close()
            say(err, f"error: {_one_line(e)}\n")
            continue
        say(output, "\n")
        if chat.stats.stop_reason == "context":
            say(err, f"context full ({chat.n_ctx} tokens): reply cut short; "
                     f"/reset to start over, or raise --ctx-size\n")
