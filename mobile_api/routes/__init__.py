"""HTTP routes: one Blueprint per resource, built on the project's Blueprint below."""

from __future__ import annotations

from typing import Any

import flask_smorest
import marshmallow as ma
from flask import current_app, request
from webargs.flaskparser import FlaskParser

_READS_QUERY = "_mobile_api_reads_query"


class _StrictParser(FlaskParser):
    """Unknown query parameters are refused (422) like unknown body fields, not ignored."""

    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
    }


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
