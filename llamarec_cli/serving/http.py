"""``llamarec serve``'s web app (FastAPI): ``POST /recommend``, ``GET /health``, ``GET /info``, and the OpenAPI
pages that come with the framework (``/docs``, ``/openapi.json``).

The models load in a thread once the server is up, so ``/health`` says 503 while they load and 200 once they can
answer: what a load balancer or an orchestrator waits for. A request is checked and its history resolved (titles
and item ids, as serve-shell resolves them) before it queues, so a bad request never reaches the model nor holds
up a batch; then the Batcher scores it with its neighbours in left-padded forward passes, each scored as it would
be alone. Every problem is one message, ``{"error": "..."}``: 4xx for the request's own, 503 while loading or when
the wait is over the timeout, 500 (the traceback in the server's log, never in the body) for a bug.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from .. import version
from ..errors import LlamarecError, UnknownUserError
from .answer import answer_json, resolve_history
from .batcher import MAX_BATCH, MAX_HISTORY, TIMEOUT_S, WAIT_MS, Batcher, BusyError
from .recommender import CANDIDATES, Recommender

log = logging.getLogger("llamarec.serve")

MAX_BODY = 1 << 20  # bytes, at least: a history of MAX_HISTORY titles of a thousand characters fits
SHAPE = 'a JSON object: {"user": "<id>"} or {"history": ["<title>", <item id>, ...]}, optionally "top_k" and "ranker"'
ENDPOINTS = "POST /recommend, GET /health, GET /info and GET /docs"
CLOSE = {"Connection": "close"}


class RecommendRequest(BaseModel):
    """A user of the dataset, or a history of titles and item ids, oldest first."""

    model_config = ConfigDict(extra="forbid")

    user: StrictStr | StrictInt | None = Field(None, description="A user's id in the dataset.", examples=["1"])
    history: list[StrictStr | StrictInt] | None = Field(
        None,
        description="Oldest first: titles (matched as serve-shell matches them) or item ids (the `item` of answers).",
        examples=[["Toy Story", "Heat (1995)", 50]],
    )
    top_k: StrictInt = Field(10, description="How many of the ranked list to return, from 1 to the candidates (20).")
    ranker: StrictBool | None = Field(
        None, description="false: the retriever's candidates alone. Default: rank when the server has a ranker."
    )

    @model_validator(mode="after")
    def user_or_history(self):
        if (self.user is None) == (self.history is None):
            raise ValueError('Give either "user" or "history", not both or neither.')
        return self


class ErrorBody(BaseModel):
    """Every error's body: one sentence, no traceback."""

    error: str = Field(description="What is wrong, and what to do instead.")


ERRORS = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "The body is not valid JSON.",
        404: "No such user in the dataset.",
        408: "The body did not arrive within the timeout.",
        413: "The body is over the size limit.",
        415: "The body was not sent as JSON.",
        422: "A field of the wrong type or out of range, or a history entry that names no single item.",
        500: "A bug: the server's log has the traceback.",
        503: "The models are loading (or failed to load), or no answer came within the timeout: retry later.",
    }.items()
}


class NotReadyError(Exception):
    """The models are still loading, or failed to."""


class Service:
    """The app's state: the Recommender once loaded (or why it could not be), and the Batcher in front of it."""

    def __init__(self, load: Callable[[], Recommender], max_batch: int, wait_ms: float, timeout_s: float):
        self.load = load
        self.recommender: Recommender | None = None
        self.failure: BaseException | None = None
        self.batcher = Batcher(self.run, max_batch=max_batch, wait_s=wait_ms / 1000, timeout_s=timeout_s)

    def start_loading(self) -> None:
        def load():
            try:
                self.recommender = self.load()
            except BaseException as exc:  # noqa: BLE001 - kept for /health and for `llamarec serve` to report
                self.failure = exc
                if isinstance(exc, LlamarecError):
                    log.error("The models could not be loaded: %s", exc)
                else:  # a bug: its traceback, in the log only
                    log.exception("The models could not be loaded")

        threading.Thread(target=load, name="llamarec-load", daemon=True).start()  # daemon: Ctrl-C need not wait

    def failure_message(self) -> str:
        """Why loading failed, for /health: the error a user can act on, or for a bug only that the log has it."""
        if isinstance(self.failure, LlamarecError):
            return str(self.failure)
        return f"An internal error ({type(self.failure).__name__}); the server's log has the details."

    def ready(self) -> Recommender:
        if self.recommender is None:
            raise NotReadyError(
                f"The models could not be loaded: {self.failure_message()}"
                if self.failure
                else "The models are still loading; retry when GET /health answers 200."
            )
        return self.recommender

    def run(self, requests: list[tuple[list[int], bool]]) -> list:
        """One batch, in the Batcher's thread: the requests to rank in one call, those to retrieve only in another."""
        answers: list = [None] * len(requests)
        for rank in (True, False):
            which = [n for n, (_, r) in enumerate(requests) if r == rank]
            if which:
                histories = [requests[n][0] for n in which]
                recs = self.recommender.recommend_many(histories, batch_size=self.batcher.max_batch, rank=rank)
                for n, rec in zip(which, recs, strict=True):
                    answers[n] = rec
        return answers


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def shown(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def validation_message(errors: list[dict], candidates: int, content_type: str) -> tuple[int, str]:
    """The first problem of a request that does not parse or fit RecommendRequest, as one sentence."""
    first = errors[0]
    kind, loc = first["type"], [str(part) for part in first["loc"][1:]]  # loc[0] is "body"
    value = first.get("input")
    if not loc and isinstance(value, bytes) and value:  # a body FastAPI did not read as JSON (curl -d's default)
        sent = f"not {content_type}" if content_type else "it had none"
        return 415, f"Send the body as JSON, with Content-Type: application/json ({sent})."
    if kind == "json_invalid":
        return 400, f"The body is not valid JSON ({first['ctx']['error']} at character {first['loc'][1]})."
    if kind == "extra_forbidden":
        return 422, f"Unknown field {shown(loc[0])}: the body must be {SHAPE}."
    if kind == "value_error" and not loc:
        return 422, str(first["ctx"]["error"])
    if not loc:  # no body, or not an object
        return 422, f"The body must be {SHAPE}."
    field = loc[0]
    if field == "history" and len(loc) > 1 and loc[1].isdigit():
        return 422, f"history[{loc[1]}] must be a title (a string) or an item id (an integer), not {shown(value)}."
    expected = {
        "history": "a list of titles and item ids, oldest first",
        "user": 'a user\'s id, e.g. "1"',
        "top_k": f"a whole number from 1 to {candidates}",
        "ranker": "true or false",
    }
    return 422, f"{field} must be {expected.get(field, first['msg'])}, not {shown(value)}."


class BoundedBody:
    """ASGI middleware: a body over ``max_bytes`` gets 413 (by its Content-Length before it is read, or while a
    chunked one is read), and a body that stops arriving for ``timeout_s`` gets 408, rather than holding a
    connection and memory without end. Both close the connection: the rest of that body is not read."""

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"The request body is over {self.max_bytes:,} bytes, the most this server accepts."
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await error(413, too_large, CLOSE)(scope, receive, send)
        received, done = 0, False

        async def bounded():
            nonlocal received, done
            if done:  # after the body: waiting for a disconnect is no stalled body
                return await receive()
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"The request body did not arrive within {self.timeout_s:g} s.", CLOSE
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise HTTPException(413, too_large, CLOSE)
            return message

        await self.app(scope, bounded, send)


def versions() -> dict:
    found = version.versions("torch", "transformers", "fastapi", "uvicorn")
    return {"python": found.pop("python")} | found  # Python first, as /health has always listed them


def create_app(
    load: Callable[[], Recommender],
    *,
    max_batch: int = MAX_BATCH,
    wait_ms: float = WAIT_MS,
    timeout_s: float = TIMEOUT_S,
    max_history: int = MAX_HISTORY,
    max_body: int | None = None,
) -> FastAPI:
    """The app over the Recommender that ``load`` returns (called in a thread once the server starts).

    ``max_batch`` requests at most share one model call; the first of a batch waits ``wait_ms`` for others; a
    request with no answer after ``timeout_s`` gets 503; a history has at most ``max_history`` entries and a body
    at most ``max_body`` bytes (default: MAX_BODY, or a kilobyte an entry for a longer ``max_history``)."""
    max_body = max_body or max(MAX_BODY, 1024 * max_history)
    service = Service(load, max_batch, wait_ms, timeout_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        service.start_loading()
        yield
        await service.batcher.stop()

    app = FastAPI(
        title="llamarec",
        summary="Two-stage LLM recommendation: a sequential retriever's candidates, ordered by an LLM ranker.",
        version=versions()["llamarec"] or "unknown",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BoundedBody, max_bytes=max_body, timeout_s=timeout_s)

    add_error_handlers(app, service)
    add_routes(app, service, max_history, max_body)
    return app


def add_error_handlers(app: FastAPI, service: Service) -> None:
    """Every error as one JSON line: 4xx for the request's own, 503 while loading or busy, 500 for a bug."""

    def candidates() -> int:
        return service.recommender.k if service.recommender else CANDIDATES

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        content_type = request.headers.get("content-type", "")
        return error(*validation_message(list(exc.errors()), candidates(), content_type))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"No {request.method} {request.url.path}: the endpoints are {ENDPOINTS}."
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(NotReadyError)
    async def not_ready(request: Request, exc: NotReadyError):
        return error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone):  # nobody reads it: 499, as nginx logs such a request
        log.info("A client disconnected before its answer: its request was dropped.")
        return Response(status_code=499)

    @app.exception_handler(BusyError)
    async def busy(request: Request, exc: BusyError):
        return error(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(LlamarecError)
    async def refused(request: Request, exc: LlamarecError):
        return error(404 if isinstance(exc, UnknownUserError) else 422, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # the traceback goes to the log (uvicorn's), not the body
        return error(500, "Internal error; the server's log has the details.")


def add_routes(app: FastAPI, service: Service, max_history: int, max_body: int) -> None:
    """POST /recommend, GET /health and GET /info; their docstrings are the OpenAPI page's text."""

    @app.post("/recommend", responses=ERRORS)
    async def recommend(body: RecommendRequest, request: Request, response: Response) -> dict:
        """The retriever's candidates and the ranker's order for a user or a history: the JSON of
        `llamarec serve-shell --json`. Requests that arrive together are scored in one batch."""
        recommender = service.ready()
        if not 1 <= body.top_k <= recommender.k:
            raise LlamarecError(f"top_k must be a whole number from 1 to {recommender.k}, not {body.top_k}.")
        if body.ranker and recommender.llm is None:
            raise LlamarecError('This server has no ranker (started with --ranker none): leave "ranker" out.')
        rank = recommender.llm is not None and body.ranker is not False
        user = None if body.user is None else str(body.user)
        items = await history_items(recommender, body, max_history)
        job = await unless_disconnected(request, service.batcher.submit((items, rank)))
        rec = job.future.result()
        response.headers["X-Batch-Size"] = str(job.batch)
        stages = {"queue": job.queued} | rec.seconds
        response.headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.1f}" for k, v in stages.items())
        return answer_json(recommender, rec, user=user, top=body.top_k)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the models are loaded and requests are answered; 503 while loading, or if loading failed."""
        if service.recommender is not None:
            return JSONResponse({"status": "ready"})
        if service.failure is not None:
            return JSONResponse({"status": "failed", "error": service.failure_message()}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/info")
    async def info() -> dict:
        """What is served and how: dataset, retriever, ranker, dtype, fusion, batching (with the batch sizes run so
        far), limits and versions."""
        return info_of(service, max_history, max_body)


class ClientGone(Exception):
    """The client closed its connection before its answer."""


async def unless_disconnected(request: Request, work):
    """``work``'s result; if the client disconnects first, ``work`` is cancelled: a request still queued leaves the
    queue instead of being scored for nobody (a batch already in the model finishes)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body is read by now: what ``receive`` gives next is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def history_items(recommender: Recommender, body: RecommendRequest, max_history: int) -> list[int]:
    """The request's history as item ids: the user's (by original id), or the titles and ids it lists."""
    if body.user is not None:
        return await run_in_threadpool(recommender.user_history, str(body.user))
    if not body.history:
        raise LlamarecError("history is empty: give at least one title or item id, oldest first.")
    if len(body.history) > max_history:
        raise LlamarecError(
            f"history has {len(body.history):,} entries; this server takes at most {max_history:,} "
            "(the most recent ones are what counts)."
        )
    return await run_in_threadpool(resolve_history, recommender, body.history)


def info_of(service: Service, max_history: int, max_body: int) -> dict:
    """GET /info's answer (503 while the models load)."""
    recommender = service.ready()
    batcher = service.batcher
    return {
        "dataset": recommender.dataset.name,
        "users": recommender.dataset.users.height,
        "items": len(recommender.titles),
        "retriever": recommender.retriever_name,
        "ranker": recommender.ranker_name,
        "dtype": recommender.dtype,
        "fusion_alpha": recommender.alpha,
        "candidates": recommender.k,
        "device": str(recommender.device),
        "batching": {
            "max_batch": batcher.max_batch,
            "wait_ms": batcher.wait_s * 1000,
            "timeout_s": batcher.timeout_s,
            "batches": {str(size): n for size, n in sorted(batcher.sizes.items())},
        },
        "limits": {"max_history": max_history, "max_body_bytes": max_body},
        "versions": versions(),
    }
