"""HTTP routes: one Blueprint per resource, built on the project's Blueprint below."""

from __future__ import annotations

from typing import Any

import flask_smorest
import marshmallow as ma
from webargs.flaskparser import FlaskParser


class _StrictParser(FlaskParser):
    """Unknown query parameters are refused (422) like unknown body fields, not ignored."""

    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
    }


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with strict query parsing."""

    ARGUMENTS_PARSER = _StrictParser()

    def arguments(self, schema: Any, **kwargs: Any) -> Any:
        """As flask-smorest's, but a schema class is instantiated once, here.

        webargs instantiates a schema class anew on every request, which cost a
        tenth of a millisecond per argument; instances are stateless while loading.
        """
        if isinstance(schema, type):
            schema = schema()
        return super().arguments(schema, **kwargs)
