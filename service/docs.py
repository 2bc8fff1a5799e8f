"""``/docs`` (Swagger UI) and ``/redoc`` with every asset served by the app itself.

FastAPI's default pages load their JavaScript, CSS, favicon (and ReDoc's Google fonts)
from CDNs, so they render blank on a machine without internet. The files come from the
``fastapi-offline`` package instead (its ``static/`` folder: Swagger UI 5 and ReDoc 2
bundles, a favicon), mounted under ``ASSETS_PATH``; the pages are FastAPI's own
``get_swagger_ui_html`` / ``get_redoc_html`` pointed there. Swagger UI's validator badge
(an image from validator.swagger.io) is switched off for the same reason.
"""

from __future__ import annotations

import importlib.resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from clipseg_serve.service.static_files import static_files

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs-assets"

#: What the pages need without an API key (door.py): the pages, their assets, the spec.
PUBLIC_PATHS: tuple[str, ...] = (DOCS_PATH, REDOC_PATH)
PUBLIC_PREFIXES: tuple[str, ...] = (ASSETS_PATH + "/",)

SWAGGER_PARAMETERS = {
    "validatorUrl": None,  # no badge fetched from validator.swagger.io
    "persistAuthorization": True,  # the key typed into "Authorize" survives a reload
}


def assets_dir() -> str:
    """The folder of the packaged Swagger UI / ReDoc files."""
    return str(importlib.resources.files("fastapi_offline") / "static")


def add_docs(app: FastAPI) -> None:
    """Mount the assets and add ``/docs`` and ``/redoc`` (create the app with
    ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_PATH, static_files(assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
