"""Chat templates: rendering a conversation into prompt text with a Jinja2 template, as
transformers' `apply_chat_template(tokenize=False)` does, inside a sandbox with time and size
bounds; the built-in templates for models whose files carry none; which template a model uses.

Owns: `render_chat`, `TEMPLATES`, `pick_template` / `template_origin` (the model's own
template, else its architecture's built-in one), the sandbox (`_Sandbox`: unsafe attribute
access fails loudly, `*`, `+`, `%`, `**` and size-taking filters and string methods are checked
before they run) and its bounds (`MAX_RENDER_SECONDS`, `MAX_RENDER_CHARS`). A template is input
(a GGUF key, a tokenizer_config.json field): whatever goes wrong in it becomes one
EdgeropeError line starting with where it came from.

Does not own: turning the rendered text into token ids or keeping a conversation
(edgerope.text.conversation), the template text stored with a tokenizer (edgerope.text.tokenizer,
edgerope.text.gguf_vocab).
"""
from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter

from edgerope.errors import EdgeropeError
from edgerope.text.tokenizer_base import first_line

__all__ = ["TEMPLATES", "MAX_RENDER_SECONDS", "MAX_RENDER_CHARS", "RenderLimit", "render_chat",
           "template_source", "pick_template", "template_origin"]
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
    bound is `_limit` characters (set per render by `render_chat`)."""

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


@functools.lru_cache(maxsize=16)
def _compile(source: str, origin: str):
    try:
        return _env().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise EdgeropeError(f"{origin}: syntax error on line {e.lineno}: "
                            f"{first_line(e)}") from None
    except jinja2.TemplateError as e:
        raise EdgeropeError(f"{origin}: {first_line(e)}") from None
    except (RenderLimit, RecursionError, MemoryError) as e:  # constant folding at compile time
        raise EdgeropeError(f"{origin}: {first_line(e)}") from None


def template_source(template: str) -> str:
    """A built-in template's source by name, else `template` itself (Jinja source)."""
    if not isinstance(template, str):
        raise EdgeropeError(f"chat template must be a string, got {type(template).__name__}")
    return TEMPLATES.get(template, template)


# What template code raises besides jinja2's errors: a filter or method given the wrong value
# (TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError, ...).
_TEMPLATE_FAULTS = (ArithmeticError, AttributeError, LookupError, RuntimeError, TypeError,
                    ValueError)


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
    tmpl = _compile(template_source(template), origin)
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
        raise EdgeropeError(f"{origin}: {first_line(e)}") from None
    except (RecursionError, MemoryError):
        raise EdgeropeError(f"{origin}: too deep or too large to render") from None
    except _TEMPLATE_FAULTS as e:  # a template is input: what breaks in it is the input's fault
        raise EdgeropeError(f"{origin}: {type(e).__name__}: {first_line(e)}") from None
    finally:
        _render_state.limit = MAX_RENDER_CHARS
    return "".join(out)


def pick_template(model) -> str:
    """The model's own chat template (`model.tokenizer.chat_template`) if it has one, else the
    architecture's built-in one (edgerope.archs: Gemma -> "gemma", most -> "chatml").
    Returns Jinja source."""
    tmpl = None if model.tokenizer is None else model.tokenizer.chat_template
    if isinstance(tmpl, (list, tuple)):  # named templates, as tokenizer_config.json allows
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default")
    elif isinstance(tmpl, dict):
        tmpl = tmpl.get("default")
    if isinstance(tmpl, str) and tmpl.strip():
        return tmpl
    from edgerope import archs
    arch = archs.find(model.config.model_type)
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
    return model.tokenizer.chat_template_origin or "chat template"

