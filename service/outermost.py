"""Layers outside *all* of Starlette's stack, its ``ServerErrorMiddleware`` included.

``app.add_middleware`` places middlewares inside ``ServerErrorMiddleware``, the layer
that turns an unhandled exception into the 500 answer (through our JSON handler,
service/errors.py). That answer is sent *past* every added middleware, so a header they
add (``X-Request-ID``) was missing from exactly the answers one most needs to quote it
for. ``wrap_outermost`` puts layers around the whole stack instead, by wrapping what
``build_middleware_stack`` returns (Starlette calls it once, at the first request).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.types import ASGIApp

__all__ = ["wrap_outermost"]


def wrap_outermost(app: Starlette, *layers: Callable[[ASGIApp], ASGIApp]) -> None:
    """Wrap ``app``'s whole middleware stack in ``layers``, the first outermost."""
    build = app.build_middleware_stack

    def build_wrapped() -> ASGIApp:
        stack = build()
        for layer in reversed(layers):
            stack = layer(stack)
        return stack

    app.build_middleware_stack = build_wrapped  # type: ignore[method-assign]
