"""`edgerope chat`: the read-reply loop in a terminal (`run_chat`).

Owns: reading user lines (line editing when stdin is a terminal, undecodable bytes replaced by
U+FFFD with a warning), the commands /reset and /exit, Ctrl-C (cancels a reply; at the prompt,
quits), printing replies and one-line errors.
Does not own: the conversation (`Chat`, edgerope.text.conversation: messages, KV-cache reuse,
context limits) or chat templates (edgerope.text.template).
"""
from __future__ import annotations

import builtins
import json
import sys

from edgerope.errors import EdgeropeError
from edgerope.text.conversation import Chat
from edgerope.text.tokenizer_base import first_line

__all__ = ["run_chat", "Chat"]


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

    With `tools` (OpenAI's tools list, via **sampling to Chat) a reply may be a tool call:
    it is printed as one line `tool_call: {"id": ..., "name": ..., "arguments": {...}}` and
    the next input line is taken as that tool's result (then the model replies again).

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
        if chat.tool_calls:  # this line is the result of the call printed last
            reply = chat.send_tool_result(chat.tool_calls[0]["id"], text)
        else:
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
            say(err, f"error: {first_line(e)}\n")
            continue
        if chat.tool_calls:
            f = chat.tool_calls[0]["function"]
            say(output, "tool_call: " + json.dumps(
                {"id": chat.tool_calls[0]["id"], "name": f["name"],
                 "arguments": json.loads(f["arguments"])}, ensure_ascii=False))
        say(output, "\n")
        if chat.stats.stop_reason == "context":
            say(err, f"context full ({chat.n_ctx} tokens): reply cut short; "
                     f"/reset to start over, or raise --ctx-size\n")
