"""The FastAPI application: lifespan, middleware, health/metrics/info endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp

from clipseg_serve.service import demo, docs, request_id, single_values
from clipseg_serve.service.config import Settings
from clipseg_serve.service.door import (
    OPEN_PATHS,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    JsonCORSMiddleware,
    document_bearer_auth,
)
from clipseg_serve.service.early_refusal import EarlyRefusalMiddleware
from clipseg_serve.service.errors import error_body, install_error_handlers
from clipseg_serve.service.head import HeadAsGetMiddleware
from clipseg_serve.service.metrics import CONTENT_TYPE, ServiceMetrics
from clipseg_serve.service.outermost import wrap_outermost
from clipseg_serve.service.routes import router
from clipseg_serve.service.slashes import StripTrailingSlashMiddleware
from clipseg_serve.service.state import (
    FatalHandler,
    PredictorFactory,
    ServiceState,
    default_predictor_factory,
    get_state,
    redact_paths,
)

log = logging.getLogger(__name__)

OPENAPI_PATH = "/openapi.json"


def version() -> str:
    try:
        return importlib.metadata.version("clipseg-serve")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class RequestMetricsMiddleware:
    """Counts requests by route template and status (pure ASGI).

    Pure ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware
    wraps ``receive`` in a way that hides client disconnects from the endpoint, and the
    endpoints need them to drop abandoned jobs.
    """

    def __init__(self, app, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def record_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # The router stores the matched route in the shared scope; raw paths would
            # give unbounded label values.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=route, status=str(status)).inc()


def create_app(
    settings: Settings | None = None,
    predictor_factory: PredictorFactory | None = None,
    on_fatal: FatalHandler | None = None,
) -> FastAPI:
    """Build the app. Weights load in the background after start-up (``/readyz``).

    ``on_fatal(reason)`` is called once if the service can no longer serve (the weights
    failed to load, the model worker died or is stuck); ``clipseg-serve`` then exits so
    Docker or Kubernetes restart it. Without it the process stays up with /healthz 503.
    """
    settings = settings or Settings()
    factory = predictor_factory or default_predictor_factory
    state = ServiceState(settings, ServiceMetrics(), factory, on_fatal=on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(state.load(), name="load-model"),
            asyncio.create_task(state.watch(), name="watchdog"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.close()

    app = FastAPI(
        title="clipseg-serve",
        version=version(),
        description="CLIPSeg segmentation from text or visual prompts: binary masks as PNG "
        "or COCO RLE at the image's own resolution. The unversioned /segment/* paths are "
        "deprecated aliases of /v1/segment/*.",
        lifespan=lifespan,
        # Our own pages with packaged assets (service/docs.py), not FastAPI's CDN ones.
        docs_url=None,
        redoc_url=None,
        openapi_url=OPENAPI_PATH if settings.docs else None,
        # No redirect built from the Host header: both forms are served (service/slashes.py).
        redirect_slashes=False,
        # A repeated scalar form field is a 422, not "the last one wins".
        dependencies=[Depends(single_values.one_value_per_field)],
    )
    app.state.service = state
    install_error_handlers(app)
    app.include_router(router)
    _add_operational_routes(app)
    open_paths: tuple[str, ...] = OPEN_PATHS
    open_prefixes: tuple[str, ...] = ()
    if settings.docs:
        docs.add_docs(app)
        open_paths = (*OPEN_PATHS, OPENAPI_PATH, *docs.PUBLIC_PATHS)
        open_prefixes = docs.PUBLIC_PREFIXES
    if settings.demo:
        demo.add_demo(app, settings)
        open_paths = (*open_paths, *demo.PUBLIC_PATHS)
        open_prefixes = (*open_prefixes, *demo.PUBLIC_PREFIXES)

    # add_middleware wraps what is there, so the last added is the outermost: (request ID
    # -> CORS -> HEAD as GET -> trailing slashes, outside Starlette's error layer, see
    # below) -> request metrics -> API key -> body limit/timeout -> early refusal -> the app
    # (door.py, early_refusal.py).
    app.add_middleware(EarlyRefusalMiddleware, state=lambda: state)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    if settings.api_keys:
        app.add_middleware(
            ApiKeyMiddleware,
            keys=settings.api_keys,
            open_paths=open_paths,
            open_prefixes=open_prefixes,
        )
        document_bearer_auth(app)
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    # Outside ServerErrorMiddleware (service/outermost.py), so that its 500 answers carry
    # X-Request-ID and the CORS headers (a browser shows its code no answer without them)
    # and lose their body on HEAD too; the path is canonical for everything.
    cors = [_cors(settings.cors_origins)] if settings.cors_origins else []
    wrap_outermost(
        app,
        request_id.RequestIdMiddleware,
        *cors,
        HeadAsGetMiddleware,
        StripTrailingSlashMiddleware,
    )
    return app


def _cors(origins: list[str]) -> Callable[[ASGIApp], ASGIApp]:
    """The CORS layer for ``origins``: JSON rejections (door.py), and the headers browser
    code may send and read."""
    return functools.partial(
        JsonCORSMiddleware,
        allow_origins=origins,
        allow_methods=["GET", "POST"],
        allow_headers=[
            "Authorization",
            "Content-Type",
            "Accept",
            "X-Request-Timeout",
            request_id.HEADER,
        ],
        # Readable by browser code: when to retry, what the server measured, and the
        # ID to quote when reporting a problem.
        expose_headers=[
            "Retry-After",
            "Server-Timing",
            "X-Mask-Score",
            "X-Mask-Threshold",
            request_id.HEADER,
        ],
    )


def _add_operational_routes(app: FastAPI) -> None:
    @app.get("/healthz", summary="The process can serve: 503 once the weights failed to load "
             "or the model worker died or is stuck")  # fmt: skip
    async def healthz(request: Request) -> JSONResponse:
        problem = get_state(request).public_health()
        if problem:
            return JSONResponse(error_body("unhealthy", problem), status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", summary="200 once the weights are loaded and the warm-up ran")
    async def readyz(request: Request) -> JSONResponse:
        state = get_state(request)
        problem = state.public_health()
        if problem:
            return JSONResponse(error_body("unhealthy", problem), status_code=503)
        if state.draining:
            return JSONResponse(error_body("shutting_down", "stopping: finishing work"), 503)
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse(error_body("not_ready", "loading weights / warming up"), 503)

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        # the document names Prometheus' text format (FastAPI would say JSON)
        responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/info", summary="Model, weights, device and batching settings")
    async def info(request: Request) -> dict:
        state = get_state(request)
        s = state.settings
        data: dict = {
            "version": version(),
            "ready": state.ready,
            "batching": {
                "max_batch_images": s.max_batch_images,
                "max_batch_prompts": s.max_batch_prompts,
                "max_wait_ms": s.max_wait_ms,
                "queue_size": s.queue_size,
                "max_queue_wait_s": s.max_queue_wait_s,
                "request_timeout_s": s.request_timeout_s,
            },
        }
        if state.predictor is not None:
            described = state.predictor.describe()
            weights = described.pop("weights")
            data.update(described)
            # The source may be a server path: name the kind and the file's digest only.
            data["weights"] = {
                "source": redact_paths(weights["source"]),
                "kind": weights["kind"],
                "sha256": state.weights_sha256,
            }
        if state.batcher is not None:
            data["batching"]["pipeline"] = state.batcher.pipelined
            data["cost_model"] = state.batcher.cost_coefficients
            data["host_cost_model"] = state.batcher.host_cost_coefficients
        return data
