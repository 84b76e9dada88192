"""`edgerope serve`: the HTTP side of the OpenAI-compatible server (starlette + uvicorn, the
`server` extra, as llama-cpp-python's server).

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health (also
without the /v1 prefix, as llama-server). Streams are server-sent events in OpenAI's chunk
format ending with `data: [DONE]`; every response carries `usage`. Errors are OpenAI error
bodies: 400 bad field (named), 401 missing or wrong API key, 404 unknown model or route, 413
body too large, 503 all slots busy and the queue full (with Retry-After).

A request becomes a scheduler Job whose events cross from the scheduler thread to the event
loop through an asyncio queue. A client that disconnects cancels its job (the stream's task
is cancelled, or a blocking request's wait sees the disconnect): the slot is free at the next
step. SIGINT / SIGTERM: uvicorn stops accepting, in-flight requests get SHUTDOWN_SECONDS to
finish, then the scheduler cancels what is left and the process exits 0.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time

from edgerope.errors import EdgeropeError
from edgerope.server.api import Api, ApiError, error_body
from edgerope.server.scheduler import Job, QueueFull, Scheduler

MAX_BODY = 4 << 20        # bytes of a request body
SHUTDOWN_SECONDS = 5      # in-flight requests' grace on SIGINT / SIGTERM
_POLL = 0.25              # a blocking request checks for a disconnect this often


def _imports():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise EdgeropeError("the server needs its extra: pip install 'edgerope[server]' "
                            "(starlette, uvicorn)") from None


def build_app(scheduler: Scheduler, api: Api, api_key: str | None = None):
    """The ASGI app serving `scheduler`'s model through `api`."""
    _imports()
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and
                hmac.compare_digest(got[7:].strip().encode(), api_key.encode())):
            raise ApiError(401, "Invalid API key: pass it as 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def read_json(request: Request):
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
            raise ApiError(413, f"request body over {MAX_BODY} bytes",
                           code="request_too_large")
        chunks, n = [], 0
        try:
            async for chunk in request.stream():
                n += len(chunk)
                if n > MAX_BODY:
                    raise ApiError(413, f"request body over {MAX_BODY} bytes",
                                   code="request_too_large")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected") from None
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}") from None

    async def completion(request: Request, chat: bool):
        try:
            authorize(request)
            body = await read_json(request)
            api.check_body(body)
            tools = None
            if chat:
                ids, tools = await asyncio.to_thread(api.chat_prompt, body)
            else:
                ids = await asyncio.to_thread(api.completion_prompt, body)
            constraint = await asyncio.to_thread(api.constraint, body, tools)
            api.check_length(ids)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise ApiError(400, f"stream: must be true or false, got {stream!r}",
                               param="stream")
            loop, events = asyncio.get_running_loop(), asyncio.Queue()
            job = Job(ids=ids, emit=lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev),
                      params=api.sampling(body), stop=api.stops(body),
                      max_tokens=api.max_tokens(body, "max_completion_tokens", "max_tokens")
                      if chat else api.max_tokens(body, "max_tokens"),
                      n_probs=api.logprobs(body, chat),
                      cache_prompt=api.flag(body, "cache_prompt", True),
                      ignore_eos=api.flag(body, "ignore_eos", False), constraint=constraint)
            job.params.validate()
            try:
                scheduler.submit(job)
            except QueueFull as e:
                raise ApiError(503, f"server busy: {e}; retry later", code="server_busy",
                               headers={"Retry-After": "1"}) from None
            except EdgeropeError as e:
                raise ApiError(400, str(e).splitlines()[0], param="prompt") from None
        except ApiError as e:
            return error(e)
        rid = api.new_id(chat)
        if stream:
            return StreamingResponse(_sse(api, scheduler, job, events, rid, chat, tools),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        return await _blocking(api, scheduler, job, events, rid, chat, request, tools)

    async def chat_completions(request):
        return await completion(request, True)

    async def completions(request):
        return await completion(request, False)

    async def models(request):
        try:
            authorize(request)
        except ApiError as e:
            return error(e)
        return JSONResponse(api.models())

    async def health(request):
        return JSONResponse({"status": "ok", **scheduler.status()})

    async def http_error(request, exc: HTTPException):
        status = exc.status_code
        msg = "no such route" if status == 404 else exc.detail
        return JSONResponse(error_body(status, f"{msg}: {request.method} {request.url.path}"),
                            status_code=status)

    routes = []
    for prefix in ("/v1", ""):
        routes += [Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]),
                   Route(f"{prefix}/completions", completions, methods=["POST"]),
                   Route(f"{prefix}/models", models, methods=["GET"]),
                   Route(f"{prefix}/health", health, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def _tool_reply(text: str, reason: str, tools):
    """(content, tool_calls, finish_reason) of a reply under `tools` (text.tools)."""
    if tools is None or reason != "stop":
        return text, None, reason
    content, calls = tools.parse(text)
    return content, calls, "tool_calls" if calls else reason


async def _sse(api, scheduler, job, events, rid, chat, tools=None):
    """Server-sent events of one job; cancelling the stream (a disconnect) cancels the job.
    With tools the reply is JSON to parse: it goes out whole at the end, as content or
    tool_calls."""
    done = False
    held = []
    try:
        if chat:
            yield _event(api.chunk(rid, chat, text="", role=True))
        while True:
            ev = await events.get()
            if ev[0] == "token":
                _, text, lp = ev
                if tools is not None:
                    held.append(text)
                elif text or lp is not None:
                    yield _event(api.chunk(rid, chat, text=text,
                                           entries=None if lp is None else [lp]))
            elif ev[0] == "done":
                reason = ev[1]
                if tools is not None:
                    content, calls, reason = _tool_reply("".join(held), reason, tools)
                    yield _event(api.chunk(rid, chat, text=content, calls=calls))
                yield _event(api.chunk(rid, chat, reason=reason, usage=ev[2]))
                break
            else:
                yield _event(error_body(ev[1], ev[2]))
                break
        yield b"data: [DONE]\n\n"
        done = True
    finally:
        if not done:
            scheduler.cancel(job)


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


async def _blocking(api, scheduler, job, events, rid, chat, request, tools=None):
    from starlette.responses import JSONResponse
    pieces, entries = [], []
    try:
        while True:
            try:
                ev = await asyncio.wait_for(events.get(), _POLL)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    scheduler.cancel(job)
                    return JSONResponse(error_body(400, "the client disconnected"), 400)
                continue
            if ev[0] == "token":
                pieces.append(ev[1])
                if ev[2] is not None:
                    entries.append(ev[2])
            elif ev[0] == "done":
                content, calls, reason = _tool_reply("".join(pieces), ev[1], tools)
                return JSONResponse(api.response(rid, chat, content, reason, ev[2],
                                                 entries if job.n_probs >= 0 else None,
                                                 calls))
            else:
                return JSONResponse(error_body(ev[1], ev[2]), status_code=ev[1])
    except asyncio.CancelledError:
        scheduler.cancel(job)
        raise


def serve(model, model_id: str, host: str = "127.0.0.1", port: int = 8080, n_slots: int = 4,
          n_ctx: int | None = None, n_batch: int = 512, api_key: str | None = None,
          kv_type: str | None = None, max_queue: int = 64, chat_template: str | None = None,
          ready=None) -> int:
    """Run the server until SIGINT / SIGTERM; returns 0. `n_ctx`: the context of all slots
    together (as llama-server's -c), each slot n_ctx // n_slots. `ready(host, port)` is
    called once it listens. The scheduler computes on this (the main) thread, uvicorn
    serves from another (Scheduler.run says why); a signal asks uvicorn to stop, and once
    its in-flight requests are done (or SHUTDOWN_SECONDS passed) the scheduler stops."""
    _imports()
    import signal
    import threading
    import uvicorn
    from edgerope.engine.cache import DEFAULT_KV_TYPE
    total = n_ctx or model.default_ctx()
    per_slot = total // n_slots
    if per_slot < 2:
        raise EdgeropeError(f"-c {total} over -np {n_slots} slots leaves {per_slot} tokens a "
                            f"slot")
    scheduler = Scheduler(model, n_slots, per_slot, n_batch, kv_type=kv_type or DEFAULT_KV_TYPE,
                          max_queue=max_queue)
    api = Api(model, model_id, per_slot, chat_template)
    app = build_app(scheduler, api, api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=SHUTDOWN_SECONDS, lifespan="off")
    server = uvicorn.Server(config)
    http = threading.Thread(target=server.run, name="edgerope-http", daemon=True)

    def on_signal(sig, frame):
        if server.should_exit:  # a second Ctrl-C: do not wait for in-flight requests
            server.force_exit = True
        server.should_exit = True

    def watch():
        http.join()
        scheduler.stop()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        http.start()
        while not server.started:
            if not http.is_alive():
                raise EdgeropeError(f"could not serve on {host}:{port} (see the message "
                                    f"above)")
            time.sleep(0.02)
        if ready is not None:
            sock = server.servers[0].sockets[0].getsockname()
            ready(sock[0], sock[1])
        threading.Thread(target=watch, name="edgerope-watch", daemon=True).start()
        scheduler.run()
    finally:
        server.should_exit = True
        for sig, handler in old.items():
            signal.signal(sig, handler)
    http.join(SHUTDOWN_SECONDS + 5)
    return 0
