"""HTTP routes: one Blueprint per resource, built on the project's Blueprint below."""

from __future__ import annotations

import itertools
import re
from typing import Any

import flask_smorest
import marshmallow as ma
from flask import Request, current_app, request
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from mobile_api.errors import NotFound
from mobile_api.routes.fields import UNSTORABLE_TEXT

_READS_QUERY = "_mobile_api_reads_query"

# No body this API takes comes near this depth; deeper ones only exhaust the stack.
MAX_JSON_DEPTH = 20
TOO_DEEP = f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels)."
UNSTORABLE_MESSAGE = "Must not contain NUL characters or unpaired surrogates."
# Raw JSON that may decode to such text: a \u0000 or a surrogate escape (pairs
# included, which decode to one valid character). The body was checked to be
# UTF-8, so it holds no surrogate byte sequences of its own.
_CONTAINERS = frozenset((dict, list))
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


class _StrictParser(FlaskParser):
    """Unknown query parameters are refused (422) like unknown body fields, not ignored.

    A JSON body is refused before any schema sees it if it is not declared JSON (415),
    nested deeper than MAX_JSON_DEPTH (400), or holds text no database can store (422).
    """

    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
    }

    def _raw_load_json(self, req: Request) -> Any:
        raw = req.get_data(cache=True)
        if not is_json_request(req):
            if raw:
                flask_smorest.abort(415)
            return core.missing
        try:
            data = core.parse_json(raw)
        except RecursionError:
            flask_smorest.abort(400, message=TOO_DEEP)
        # Both scans of the raw bytes run at C speed; most bodies need no walk at all.
        if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _deeper_than(
            data, MAX_JSON_DEPTH
        ):
            flask_smorest.abort(400, message=TOO_DEEP)
        if _SUSPECT_ESCAPE.search(raw):
            _refuse_unstorable_text(data)
        return data


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether `data` nests more than `limit` lists and objects, level by level."""
    level = [data]
    for _ in range(limit):
        items = itertools.chain.from_iterable(
            container.values() if type(container) is dict else container for container in level
        )
        level = [item for item in items if type(item) in _CONTAINERS]
        if not level:
            return False
    return True


def _refuse_unstorable_text(data: Any) -> None:
    """Abort with 422 at the first key or string no database can store."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if UNSTORABLE_TEXT.search(key):
                    _abort_unstorable(path)
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, str(index))) for index, item in enumerate(value))
        elif isinstance(value, str) and UNSTORABLE_TEXT.search(value):
            _abort_unstorable(path)


def _abort_unstorable(path: tuple[str, ...]) -> None:
    """422 with the message at the field's place, as marshmallow nests its errors."""
    errors: Any = [UNSTORABLE_MESSAGE]
    for name in reversed(path):
        # The offending name itself cannot be echoed: it is unstorable text.
        errors = {UNSTORABLE_TEXT.sub("\ufffd", name): errors}
    flask_smorest.abort(422, errors={"json": errors if path else {"_schema": errors}})


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with strict query parsing.

    An operation that declares no query arguments refuses any query string (422), so
    nothing - coordinates above all (API.md) - is ever accepted in a URL, where proxies
    and access logs would keep it; those that declare some refuse unknown ones.
    """

    ARGUMENTS_PARSER = _StrictParser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_request(_refuse_undeclared_query)
        self.before_request(_refuse_unstorable_url_values)

    def arguments(self, schema: Any, **kwargs: Any) -> Any:
        """As flask-smorest's, but a schema class is instantiated once, here.

        webargs instantiates a schema class anew on every request, which cost a
        tenth of a millisecond per argument; instances are stateless while loading.
        """
        if isinstance(schema, type):
            schema = schema()
        decorate = super().arguments(schema, **kwargs)
        if kwargs.get("location") not in ("query", "querystring"):
            return decorate

        def marked(func: Any) -> Any:
            view = decorate(func)
            setattr(view, _READS_QUERY, True)  # functools.wraps carries it outwards
            return view

        return marked


def _refuse_undeclared_query() -> None:
    if not request.args or request.endpoint is None:
        return
    view = current_app.view_functions[request.endpoint]
    view_class = getattr(view, "view_class", None)
    handler = getattr(view_class, request.method.lower(), view) if view_class else view
    if not getattr(handler, _READS_QUERY, False):
        flask_smorest.abort(
            422, errors={"query": {name: ["Unknown field."] for name in request.args}}
        )


def _refuse_unstorable_url_values() -> None:
    """No resource has an id no database could store; no query value may hold a NUL."""
    for value in (request.view_args or {}).values():
        if isinstance(value, str) and UNSTORABLE_TEXT.search(value):
            raise NotFound()
    bad = [name for name, value in request.args.items(multi=True) if UNSTORABLE_TEXT.search(value)]
    if bad:
        flask_smorest.abort(422, errors={"query": {name: [UNSTORABLE_MESSAGE] for name in bad}})
