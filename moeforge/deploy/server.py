"""The local OpenAI-compatible server: /v1/models, /v1/completions, /v1/chat/completions (streaming or not), health,
Prometheus metrics; API keys, request limits with 4xx errors in OpenAI's error shape; usage metered per expert.

DESIGN.md "Deployment". FastAPI on uvicorn; generation runs in engine.py's single worker thread,
which batches concurrent requests. Nothing here reaches out to the network: the model and tokenizer
are loaded from local files (HF_HUB_OFFLINE is set by `moeforge serve`).
"""

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

from moeforge.deploy.engine import Engine, Request, Result
from moeforge.deploy.keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    max_in_flight: int = 64  # requests admitted and not yet finished; beyond it, 429


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def create_app(engine: Engine, *, model_name: str, keys: Keys, limits: Limits = Limits(), ledger=None):
    """The ASGI app; `keys`: the API keys it accepts (Bearer tokens); `ledger`: a usage.Ledger or None."""
    from fastapi import FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    app = FastAPI(title="moeforge", docs_url=None, redoc_url=None, openapi_url=None)
    registry = CollectorRegistry()
    requests_total = Counter("moeforge_serve_requests_total", "Requests by endpoint and outcome", ["endpoint", "outcome"], registry=registry)
    tokens_total = Counter("moeforge_serve_tokens_total", "Tokens by direction", ["direction"], registry=registry)
    ttft = Histogram("moeforge_serve_time_to_first_token_seconds", "Time to first token", registry=registry)
    in_flight = Gauge("moeforge_serve_in_flight", "Requests admitted and not finished", registry=registry)
    state = {"in_flight": 0}
    created = int(time.time())

    def error(exc: ApiError):
        return JSONResponse(status_code=exc.status, content={"error": {"message": exc.message, "type": exc.type,
                                                                        "param": exc.param, "code": exc.code}})

    @app.exception_handler(ApiError)
    async def _api_error(_request, exc: ApiError):
        return error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(ApiError(400, f"invalid request: {where or 'body'}: {first.get('msg', 'malformed')}", param=where or None))

    def authorise(request: HttpRequest) -> None:
        header = request.headers.get("authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        verdict = keys.check(token)
        if not verdict.ok:
            raise ApiError(401, verdict.message, type="authentication_error", code=verdict.code)

    async def body(request: HttpRequest) -> dict:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return data

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "pending": engine.pending(), "in_flight": state["in_flight"]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: HttpRequest):
        authorise(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "moeforge"}]}

    @app.post("/v1/completions")
    async def completions(request: HttpRequest):
        authorise(request)
        data = await body(request)
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string", param="prompt")
        return await run("completions", data, prompt, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest):
        authorise(request)
        data = await body(request)
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
                raise ApiError(400, f"messages[{i}] must be an object with role system|user|assistant and string content",
                               param=f"messages[{i}]")
        prompt = engine.tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                                      add_generation_prompt=True, tokenize=False)
        return await run("chat", data, prompt, chat=True)

    async def run(endpoint: str, data: dict, prompt: str, *, chat: bool):
        name = data.get("model")
        if name != model_name:
            raise ApiError(404, f"model {name!r} does not exist here; this server serves {model_name!r}", param="model",
                           code="model_not_found")
        request = _request(engine, data, prompt, limits)
        if state["in_flight"] >= limits.max_in_flight:
            requests_total.labels(endpoint, "rejected").inc()
            raise ApiError(429, f"{limits.max_in_flight} requests are in flight; retry shortly", type="rate_limit_error")
        state["in_flight"] += 1
        in_flight.set(state["in_flight"])
        request.out = _Sink(asyncio.get_running_loop())
        engine.submit(request)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        now = int(time.time())

        def finish(result: Result | None) -> None:
            state["in_flight"] -= 1
            in_flight.set(state["in_flight"])
            if result is None:  # the batch failed: nothing was served
                requests_total.labels(endpoint, "error").inc()
                return
            tokens_total.labels("in").inc(result.prompt_tokens)
            tokens_total.labels("out").inc(result.completion_tokens)
            if result.ttft_s is not None:
                ttft.observe(result.ttft_s)
            requests_total.labels(endpoint, result.finish_reason).inc()
            if ledger is not None:
                ledger.record(rid, kind=endpoint, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                              experts=result.experts, finish_reason=result.finish_reason)

        if data.get("stream"):
            return StreamingResponse(_stream(request, rid, now, model_name, chat, finish), media_type="text/event-stream")
        try:
            result = await _wait(request)
        except asyncio.CancelledError:  # the client went away: stop its generation; the engine still reports what it made
            request.cancelled.set()
            _background(_drain(request, finish))
            raise
        except ApiError:
            finish(None)
            raise
        finish(result)
        usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                 "total_tokens": result.prompt_tokens + result.completion_tokens}
        reason = "stop" if result.finish_reason == "stop" else "length"
        if chat:
            return {"id": rid, "object": "chat.completion", "created": now, "model": model_name, "usage": usage,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text}, "finish_reason": reason}]}
        return {"id": rid, "object": "text_completion", "created": now, "model": model_name, "usage": usage,
                "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": reason}]}

    return app


def _request(engine: Engine, data: dict, prompt: str, limits: Limits) -> Request:
    def number(key, default, low, high, kind=float):
        value = data.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and int(value) != value):
            raise ApiError(400, f"{key} must be {'an integer' if kind is int else 'a number'}", param=key)
        if not low <= value <= high:
            raise ApiError(400, f"{key} must be between {low} and {high}, got {value}", param=key)
        return kind(value)

    max_tokens = number("max_tokens", min(256, limits.max_tokens), 1, limits.max_tokens, int)
    if "max_completion_tokens" in data and data["max_completion_tokens"] is not None:
        max_tokens = number("max_completion_tokens", max_tokens, 1, limits.max_tokens, int)
    stop = data.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
        raise ApiError(400, "stop must be a string or a list of at most 4 strings", param="stop")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "seed must be an integer", param="seed")
    ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if len(ids) > limits.max_prompt_tokens:
        raise ApiError(400, f"the prompt is {len(ids)} tokens, over this server's limit of {limits.max_prompt_tokens}",
                       param="prompt", code="context_length_exceeded")
    return Request(prompt_ids=ids, max_tokens=max_tokens, temperature=number("temperature", 1.0, 0.0, 2.0),
                   top_p=number("top_p", 1.0, 0.0, 1.0), stop=tuple(stop), seed=seed)


class _Sink:
    """What the engine's thread puts a request's pieces into, read with `await get()` on the server's event loop.
    Unlike a thread blocked on a queue, a cancelled reader leaves nothing behind to swallow the next piece."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item) -> None:  # from the engine's thread
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self):
        return await self.queue.get()


_TASKS: set = set()  # background tasks, kept referenced until done


def _background(coroutine) -> None:
    task = asyncio.ensure_future(coroutine)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def _wait(request: Request) -> Result:
    while True:
        kind, value = await request.out.get()
        if kind == "done":
            return value
        if kind == "error":
            raise ApiError(500, str(value), type="server_error")


async def _stream(request: Request, rid: str, created: int, model: str, chat: bool, finish):
    """Server-sent events in OpenAI's chunk shapes, ending with `data: [DONE]`; a client that goes away cancels it."""
    kind_name = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, reason: str | None, first: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
        return f"data: {json.dumps({'id': rid, 'object': kind_name, 'created': created, 'model': model, 'choices': [choice]})}\n\n"

    result, failed = None, False
    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            kind, value = await request.out.get()
            if kind == "text":
                yield chunk(value, None)
            elif kind == "done":
                result = value
                break
            else:
                failed = True
                yield f"data: {json.dumps({'error': {'message': str(value), 'type': 'server_error'}})}\n\n"
                return
        yield chunk(None if chat else "", "stop" if result.finish_reason == "stop" else "length")
        yield "data: [DONE]\n\n"
    finally:
        if failed:
            finish(None)
        elif result is None:  # the client went away mid-stream: stop generating, and still account for what was made
            request.cancelled.set()
            _background(_drain(request, finish))
        else:
            finish(result)


async def _drain(request: Request, finish) -> None:
    """Wait for a cancelled request's end, and account for it: the ledger stays whole."""
    while True:
        kind, value = await request.out.get()
        if kind in ("done", "error"):
            finish(value if kind == "done" else None)
            return
