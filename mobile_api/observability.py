"""Structured logs, request ids, Prometheus metrics and security headers."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUESTS = Counter(
    "mobile_api_http_requests_total",
    "HTTP requests by route template, method and status class (2xx, 4xx, 5xx)",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "mobile_api_http_request_duration_seconds",
    "HTTP request latency by endpoint and method",
    ["endpoint", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# Label values come from closed sets only: any other method (clients may invent
# them) is "other", an unrouted path is "unmatched", a status is its class.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# Defence in depth: our code never logs secrets, but a library might echo a
# header. These shapes are masked in every record whatever logged them.
_SECRET_SHAPES = re.compile(r"\b(mk|dt)_[A-Za-z0-9_-]{20,}|Bearer\s+\S+", re.IGNORECASE)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": _SECRET_SHAPES.sub("[redacted]", record.getMessage()),
        }
        if has_request_context() and "request_id" in g:
            entry["request_id"] = g.request_id
        for key in ("endpoint", "method", "status", "duration_ms"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = _SECRET_SHAPES.sub(
                "[redacted]", self.formatException(record.exc_info)
            )
        elif record.exc_text:
            # Already rendered (and redacted) upstream, e.g. by the geo log filter.
            entry["exception"] = _SECRET_SHAPES.sub("[redacted]", record.exc_text)
        return json.dumps(entry)


JsonFormatter.converter = time.gmtime


def configure_logging(level: str) -> None:
    """Send the service's logs to stderr as JSON lines."""
    root = logging.getLogger()
    if not any(getattr(h, "_mobile_api", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._mobile_api = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.getLogger("mobile_api").setLevel(level)
    # werkzeug's own access log repeats the URL; ours is structured and enough.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


access_log = logging.getLogger("mobile_api.access")


def init_app(app: Flask) -> None:
    """Attach request ids, metrics, the access log and security headers."""

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        if endpoint != "/metrics":
            method = request.method if request.method in _METHODS else "other"
            REQUESTS.labels(endpoint, method, f"{response.status_code // 100}xx").inc()
            LATENCY.labels(endpoint, method).observe(elapsed)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["Strict-Transport-Security"] = "max-age=31536000; includeSubDomains"
        response.headers["X-Content-Type-Options"] = "nosniff"
        # setdefault: the console's pages set their own (they load our CSS, post forms).
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers["X-Frame-Options"] = "DENY"
        if endpoint != "/docs":
            response.headers.setdefault(
                "Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"
            )
        if request.path.startswith("/v1/"):
            response.headers["Cache-Control"] = "no-store"
        # The path only: query strings never carry secrets or coordinates here,
        # but they are still kept out of the log.
        access_log.info(
            "%s %s %s",
            request.method,
            endpoint,
            response.status_code,
            extra={
                "endpoint": endpoint,
                "method": request.method,
                "status": response.status_code,
                "duration_ms": round(elapsed * 1000, 2),
            },
        )
        return response


def metrics_response() -> Response:
    """Prometheus text exposition of this process's (or all workers') metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import CollectorRegistry, multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)
