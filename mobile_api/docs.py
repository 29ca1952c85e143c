"""/docs: Swagger UI over /openapi.json, from assets the app serves itself.

The assets are swagger-ui-dist, vendored at the version in static/swagger-ui/VERSION,
so the page works offline and pins what it runs; no inline script, so it works under
a Content-Security-Policy that allows scripts and styles from this origin only.
"""

from __future__ import annotations

from flask import Flask, Response, current_app, render_template, url_for

# Swagger UI fetches the document from this origin and shows its icons as data: images;
# nothing else (no inline script, no other origin, no framing).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def docs() -> Response:
    """The Swagger UI page: markup, the pinned bundle and docs.js, which starts it."""
    page = render_template(
        "docs.html",
        title=current_app.config["API_TITLE"],
        spec_url=url_for("api-docs.openapi_json"),
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def init_app(app: Flask) -> None:
    """Serve /docs (OPENAPI_SWAGGER_UI_PATH) from the vendored assets."""
    path = app.config.get("OPENAPI_SWAGGER_UI_PATH")
    if path:
        app.add_url_rule(f"/{path.strip('/')}", endpoint="docs", view_func=docs)
