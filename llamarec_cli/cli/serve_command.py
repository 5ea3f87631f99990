"""llamarec serve"""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from .. import settings
from ..serving.batcher import MAX_BATCH, MAX_HISTORY, TIMEOUT_S, WAIT_MS
from .options import (
    Adapter,
    DatasetName,
    Device,
    Dtype,
    Fusion,
    Model,
    RankedRetriever,
    Ranker,
    TemplatesDir,
    Workdir,
    check_loading_options,
)
from .output import note, stderr

EPILOG = (
    "Examples:  llamarec serve ml-100k   ·   llamarec serve ml-100k --host 0.0.0.0 --port 8080   ·   "
    'curl -s localhost:8000/recommend -H \'content-type: application/json\' -d \'{"user": "1", "top_k": 5}\'   ·   '
    "API docs at http://127.0.0.1:8000/docs"
)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before any model loads: a port in use is one line now, not after the wait."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        from ..errors import ConfigError

        raise ConfigError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Choose another --port (0: any free one) or --host."
        ) from None


def serve(
    dataset: DatasetName,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 for all.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on; 0: any free one.")] = 8000,
    max_batch: Annotated[
        int, typer.Option("--max-batch", min=1, help="Most requests scored together in one model call.")
    ] = MAX_BATCH,
    wait_ms: Annotated[
        float,
        typer.Option("--wait-ms", min=0, max=60_000, help="How long a batch's first request waits for others (ms)."),
    ] = WAIT_MS,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.001, max=86_400, help="Seconds a request may wait for its answer before a 503."
        ),
    ] = TIMEOUT_S,
    max_history: Annotated[
        int, typer.Option("--max-history", min=1, help="Most titles and item ids in a request's history.")
    ] = MAX_HISTORY,
    ranker: Ranker = "default",
    adapter: Adapter = None,
    model: Model = None,
    retriever: RankedRetriever = None,
    fusion: Fusion = "auto",
    dtype: Dtype = None,
    device: Device = "auto",
    workdir: Workdir = None,
    templates_dir: TemplatesDir = None,
) -> None:
    """Serve recommendations over HTTP: POST /recommend, GET /health, GET /info (API docs at /docs).

    The retriever and ranker load once, as for serve-shell; requests that arrive together are scored in one batch."""
    uvicorn, create_app = _serving_extra()
    check_loading_options(device, dtype, fusion)
    if wait_ms / 1000 >= timeout:
        from ..errors import ConfigError

        raise ConfigError(f"--wait-ms {wait_ms:g} is at least --timeout {timeout:g} s: every request would time out.")
    sock = listen(host, port)
    url = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    options = dict(retriever=retriever, ranker=ranker, adapter=adapter, model=model, dtype=dtype, device=device,
                   templates_dir=templates_dir)  # fmt: skip
    load = _loader(dataset, url, lambda: setattr(server, "should_exit", True), workdir=settings.workdir(workdir),
                   fusion=fusion, **options)  # fmt: skip
    app = create_app(load, max_batch=max_batch, wait_ms=wait_ms, timeout_s=timeout, max_history=max_history)
    config = uvicorn.Config(app, log_level="info", access_log=False, timeout_graceful_shutdown=int(timeout) + 1)
    server = uvicorn.Server(config)
    stderr.print(
        f"Listening on {url}; loading the models (GET /health answers 200 once they are loaded).", soft_wrap=True
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stopped cleanly on Ctrl-C, then raised it again
        pass
    finally:
        sock.close()
    if app.state.service.failure is not None:
        raise app.state.service.failure
    stderr.print("Stopped.")


def _serving_extra():
    """uvicorn and the app, from the optional extra: checked before anything loads."""
    from ..errors import LlamarecError

    try:
        import uvicorn

        from ..serving.http import create_app
    except ImportError as exc:
        raise LlamarecError(
            f"llamarec serve needs FastAPI and uvicorn ({exc.name} is not installed): pip install 'llamarec[serve]'"
        ) from None
    return uvicorn, create_app


def _loader(dataset: str, url: str, stop, **options):
    """What the server calls, in a thread once it is up, to load the models; ``stop`` ends the server when loading
    fails (the error is reported once it has stopped)."""

    def load():
        from ..serving.recommender import Recommender

        try:
            recommender = Recommender(dataset, **options)
        except BaseException:
            stop()
            raise
        for line in recommender.notes():
            note(line)
        note(f"Serving {dataset} on {url} (ranker: {recommender.ranker_name}; API docs: {url}/docs)")
        return recommender

    return load


def install(cli: typer.Typer) -> None:
    cli.command("serve", epilog=EPILOG)(serve)
