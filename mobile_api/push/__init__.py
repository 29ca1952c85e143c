"""Push transports behind one seam: FCM (firebase-admin), APNs (HTTP/2), or the log.

Transports are registered by configuration: `PUSH_TRANSPORTS` lists modules, each
with two functions of the app config,

    providers(config) -> frozenset[str]   # the providers it would serve (no I/O)
    build(config) -> dict[str, PushTransport]   # one transport per provider it serves

`init_app` reads that list; `transport(app)` builds the process's `Router` on first
use (once per process: connections are not shared across a fork), which hands each
message to the transport of its `PushMessage.provider`. A new kind of push (web
push, say) is one new module named in `PUSH_TRANSPORTS`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from flask import Flask

from .base import (
    APNS,
    APNS_SANDBOX,
    FCM,
    INVALID_TOKEN_ERRORS,
    MAX_BATCH,
    PROVIDERS,
    Outcome,
    PushMessage,
    PushTransport,
    Reason,
    SendResult,
    mask_token,
    parse_retry_after,
)
from .fcm import FcmSetupError, FcmTransport
from .log import LogTransport
from .router import Router

__all__ = [
    "APNS",
    "APNS_SANDBOX",
    "FCM",
    "INVALID_TOKEN_ERRORS",
    "MAX_BATCH",
    "PROVIDERS",
    "FcmSetupError",
    "FcmTransport",
    "LogTransport",
    "Outcome",
    "PushMessage",
    "PushTransport",
    "Reason",
    "Router",
    "SendResult",
    "init_app",
    "make_transport",
    "mask_token",
    "parse_retry_after",
    "providers",
    "transport",
]

log = logging.getLogger("mobile_api.push")

_EXTENSION = "push_transport"  # the built Router (tests swap it)
_MODULES = "push_modules"


def make_transport(
    credentials_path: str | None,
    project_id: str | None,
    endpoint: str | None,
    timeout: float = 10.0,
) -> PushTransport:
    """Build the FCM transport when credentials are given, else the log transport."""
    if credentials_path:
        return FcmTransport(credentials_path, project_id, endpoint, timeout)
    return LogTransport()


def _modules(config: Mapping[str, Any]) -> list[ModuleType]:
    return [importlib.import_module(name) for name in config["PUSH_TRANSPORTS"]]


def init_app(app: Flask) -> None:
    """Load the transport modules PUSH_TRANSPORTS names (a typo fails at start-up)."""
    app.extensions[_MODULES] = _modules(app.config)


def providers(app: Flask) -> frozenset[str]:
    """The providers this deployment can reach, read from config without building anything."""
    modules = app.extensions.get(_MODULES) or _modules(app.config)
    served: set[str] = set()
    for module in modules:
        served |= module.providers(app.config)
    return frozenset(served)


def transport(app: Flask, lane: str | None = None) -> PushTransport:
    """The app's push router, built once per process (and `lane`) from the configured modules.

    A bad credential file raises here, so a dispatcher that builds it as it starts
    fails then, not at its first chunk. A forked pool process builds its own:
    connections and firebase-admin's state are not shared across a fork. A `lane`
    (notifications) gets a router of its own: its messages never wait for one of
    the connections a campaign's batch keeps busy.
    """
    name = _EXTENSION if lane is None else f"{_EXTENSION}.{lane}"
    existing: PushTransport | None = app.extensions.get(name)
    if existing is not None and app.extensions.get(f"{name}.pid") in (None, os.getpid()):
        return existing
    transports: dict[str, PushTransport] = {}
    try:
        for module in app.extensions.get(_MODULES) or _modules(app.config):
            for provider, built in module.build(app.config).items():
                transports[provider] = built
                log.info("push transport: %s", built)
    except BaseException:
        for built in transports.values():
            built.close()
        raise
    router = Router(transports)
    app.extensions[name] = router
    app.extensions[f"{name}.pid"] = os.getpid()
    return router
