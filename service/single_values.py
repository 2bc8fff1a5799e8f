"""One value per scalar field: a form field or query parameter that takes one value and is
sent more than once is a 422 naming it.

FastAPI reads a scalar field with ``FormData.get``, which keeps the *last* value and drops
the others silently: ``refine=bogus&refine=guided`` would pass as ``guided``, so a
client's mistake (or a proxy's, or an attacker's probing) is never reported. Fields
declared as lists (``prompt``, ``threshold`` on /segment/text, ``support_image``...) stay
repeatable.

``one_value_per_field`` is an app-wide dependency: it reads which fields the matched
route declares from the route itself (its form model and query parameters), so a field
added to an endpoint or to a shared dependency (service/post_form.py) is covered without
a list to keep in step.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from clipseg_serve.service.errors import ApiError

__all__ = ["one_value_per_field", "scalar_form_fields", "scalar_query_params"]

_UNIONS = (typing.Union, types.UnionType)
_COLLECTIONS = (list, tuple, set, frozenset, Sequence, AbstractSet)


def takes_many(annotation: object) -> bool:
    """Whether a field of this type accepts repeated values (a list, tuple or set, alone
    or in an ``Optional`` / ``Annotated``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return takes_many(typing.get_args(annotation)[0])
    if origin in _UNIONS:
        return any(takes_many(arg) for arg in typing.get_args(annotation))
    return origin in _COLLECTIONS or annotation in _COLLECTIONS


def scalar_form_fields(route: APIRoute) -> frozenset[str]:
    """The names (aliases) of ``route``'s single-valued form fields and file uploads.

    ``body_field`` is the model FastAPI builds from every form field of the endpoint and
    of its dependencies, flattened: the same fields it validates.
    """
    body = route.body_field
    model = getattr(body.field_info.annotation, "model_fields", None) if body else None
    if not model:
        return frozenset()
    return frozenset(
        field.alias or name for name, field in model.items() if not takes_many(field.annotation)
    )


def _query_params(dependant: Dependant) -> Iterable:
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_params(sub)


def scalar_query_params(route: APIRoute) -> frozenset[str]:
    """The names (aliases) of ``route``'s single-valued query parameters, dependencies'
    included."""
    return frozenset(
        param.alias
        for param in _query_params(route.dependant)
        if not takes_many(param.field_info.annotation)
    )


def _repeated(names: Iterable[str], scalars: frozenset[str]) -> list[str]:
    """The scalar names that occur more than once in ``names``, in order of appearance."""
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in scalars:
            if name in seen and name not in repeated:
                repeated.append(name)
            seen.add(name)
    return repeated


async def one_value_per_field(request: Request) -> None:
    """422 ``invalid_field`` when a scalar form field or query parameter of the matched
    route is sent more than once.

    Runs as a dependency, before the endpoint's own fields are validated, so the 422 is
    about the repetition even when one of the values would also be invalid. The form it
    reads is the one FastAPI already parsed (``Request.form`` caches it).
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    query = (name for name, _ in request.query_params.multi_items())
    repeated = _repeated(query, scalar_query_params(route))
    form_scalars = scalar_form_fields(route)
    if form_scalars:
        form = await request.form()
        repeated += _repeated((name for name, _ in form.multi_items()), form_scalars)
    if repeated:
        message = "; ".join(f"{name}: sent more than once; it takes one value" for name in repeated)
        raise ApiError(422, "invalid_field", message)
