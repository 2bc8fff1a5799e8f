"""HTTP errors: one JSON shape, ``{"error": {"code", "message"}}``, for every failure
(plus ``request_id`` inside a request, ``retry_after_s`` on 429).

Domain errors from ``model`` map to 4xx here, so bad input never becomes a 500.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipseg_serve.model.errors import (
    ClipSegError,
    ImageDecodeError,
    ImageTooLargeError,
    InvalidMaskError,
    InvalidPromptError,
    UnsupportedImageFormatError,
)
from clipseg_serve.service import request_id


class ApiError(Exception):
    """An error answered as ``status`` with a stable machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.retry_after = retry_after


def error_body(code: str, message: str, retry_after: float | None = None) -> dict:
    """The one error shape. ``retry_after_s`` (429 only): the unrounded estimate behind
    the integer ``Retry-After`` header, for clients that can wait less than a second.
    ``request_id``: the request's ID (as in ``X-Request-ID``), when built inside one."""
    error: dict = {"code": code, "message": message}
    if retry_after is not None:
        error["retry_after_s"] = round(retry_after, 3)
    rid = request_id.current()
    if rid is not None:
        error["request_id"] = rid
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
) -> JSONResponse:
    body = error_body(code, message, retry_after)
    return JSONResponse(body, status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    """The answer to an ``ApiError``: its status, code, message, headers, retry_after_s."""
    return error_response(exc.status, exc.code, exc.message, exc.headers, exc.retry_after)


def from_domain(exc: ClipSegError) -> ApiError:
    """The HTTP meaning of a library error."""
    if isinstance(exc, UnsupportedImageFormatError):
        # A readable file in a format we refuse (ICO, EPS...): "send another type", not 400.
        return ApiError(415, "unsupported_media_type", str(exc))
    if isinstance(exc, ImageTooLargeError):
        return ApiError(413, "image_too_large", str(exc))
    if isinstance(exc, ImageDecodeError):
        return ApiError(400, "undecodable_image", str(exc))
    if isinstance(exc, InvalidMaskError):
        return ApiError(422, "invalid_mask", str(exc))
    if isinstance(exc, InvalidPromptError):
        return ApiError(422, "invalid_prompt", str(exc))
    return ApiError(422, "invalid_input", str(exc))


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return api_error_response(exc)

    @app.exception_handler(ClipSegError)
    async def _domain_error(_: Request, exc: ClipSegError) -> JSONResponse:
        api = from_domain(exc)
        return error_response(api.status, api.code, api.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_field", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Not logged here: Starlette re-raises after this answer and uvicorn logs it with
        # its traceback ("Exception in ASGI application"), with the request's ID.
        return error_response(500, "internal_error", "internal error; see the server log")
