"""Configuration: defaults, then environment overrides, then test overrides."""

from __future__ import annotations

import os
from typing import Any

from mobile_api.version import __version__


class Defaults:
    """Settings in force when nothing overrides them."""

    SECRET_KEY: str | None = None
    # Read when SECRET_KEY is unset (None: secret_key in the instance folder, which
    # bin/serve generates); owner-only permissions required.
    SECRET_KEY_FILE: str | None = None
    # A dispatcher (embedded or Celery worker) touches this file while its loop runs;
    # the container healthcheck (mobile_api/healthcheck.py) reads its age. None: off.
    HEARTBEAT_FILE: str | None = None
    SQLALCHEMY_DATABASE_URI: str | None = None  # None → SQLite file under instance/
    SQLALCHEMY_ENGINE_OPTIONS: dict[str, Any] = {}
    # A server connection idle this long is pinged before use, and replaced if dead
    # (every checkout when SQLALCHEMY_ENGINE_OPTIONS sets pool_pre_ping instead).
    DATABASE_PING_AFTER_IDLE_SECONDS = 10.0
    CELERY_BROKER_URL: str | None = None
    REDIS_URL: str | None = None

    FCM_CREDENTIALS: str | None = None
    FCM_PROJECT_ID: str | None = None
    FCM_ENDPOINT: str | None = None
    FCM_TIMEOUT = 10.0

    # Push campaigns: retries of retryable FCM errors, and the dispatcher's units of work.
    PUSH_MAX_ATTEMPTS = 0  # 0: retries are bounded by time only (PUSH_RETRY_WINDOW_SECONDS)
    PUSH_RETRY_BASE_SECONDS = 2.0
    PUSH_RETRY_MAX_SECONDS = 600.0
    DISPATCH_CHUNK_SIZE = 500  # devices claimed and handed to FCM at once (≤ 500)
    DISPATCH_ENUMERATE_BATCH = 5000  # audience devices turned into deliveries per step
    # A claim not renewed for this long belongs to a dead dispatcher (a live one
    # renews it every third of it while it hands the chunk over): another
    # dispatcher sends the chunk again, with the same collapse identity.
    DISPATCH_CLAIM_LEASE_SECONDS = 30.0
    DISPATCH_POLL_SECONDS = 1.0  # embedded worker: idle wait between passes
    # Niceness of campaign work (mobile_api/priority.py): the embedded dispatcher's
    # campaign thread, and Celery workers that do not consume the notification queue,
    # yield the CPU to web requests and notifications. 0: the same priority as they.
    DISPATCH_CAMPAIGN_NICE = 10
    # Celery: a campaign with work overdue and no enumeration, claim or record for
    # this long has lost its tasks; the sweep queues one recovery at a time.
    DISPATCH_STALL_SECONDS = 300.0
    # Retries of a message stop this long after its campaign started sending (its
    # ttl_seconds instead when it has one), however many attempts that took.
    PUSH_RETRY_WINDOW_SECONDS = 86400.0
    # Circuit breaker of each push provider: while one fails, its deliveries (every
    # campaign's and notification's) wait (doubling from PUSH_RETRY_BASE_SECONDS up
    # to this, or Retry-After) before one probe message.
    PUSH_BREAKER_MAX_SECONDS = 30.0
    # Deployment-wide FCM send rate shared by every dispatcher (None: unlimited):
    # through Redis with REDIS_URL, else through FCM_LIMITER_FILE on this host.
    FCM_MAX_MESSAGES_PER_SECOND: float | None = None
    # APNs' own rate (unset: unlimited), for each APNs host (production, sandbox);
    # FCM's rate does not pace APNs.
    APNS_MAX_MESSAGES_PER_SECOND: float | None = None
    FCM_LIMITER_FILE: str | None = None  # None: fcm-slot in the instance folder
    # Celery on Redis: a task a dead worker had taken goes back to the queue after this.
    CELERY_VISIBILITY_TIMEOUT = 30.0
    CELERY_QUEUE = "mobile_api"
    # Promotional messages due inside quiet hours ("21:00-08:00", device's timezone)
    # wait for their end; caps ("2/1d,5/7d") limit promotional hand-offs per device.
    # Unset: v1 behaviour. A device's own quiet hours apply either way.
    QUIET_HOURS: str | None = None
    PROMO_FREQUENCY_CAP: str | None = None
    # Celery: a task comes back by countdown only for work due this soon; later
    # work (scheduled waves, quiet hours) is found by the beat sweep.
    DISPATCH_COUNTDOWN_MAX_SECONDS = 60.0
    # Transactional notifications: how often the embedded dispatcher's notification
    # lane looks for due deliveries, and how long a request waits for a racing twin
    # with the same Idempotency-Key before answering 409 request_in_progress.
    NOTIFY_POLL_SECONDS = 0.1
    NOTIFY_IDEMPOTENCY_WAIT_SECONDS = 5.0

    GEOCODER_DOMAIN = "nominatim.openstreetmap.org"
    GEOCODER_SCHEME = "https"
    GEOCODER_USER_AGENT = f"mobile_api/{__version__}"
    LOCATION_PRECISION_DECIMALS = 2
    # The public Nominatim's usage policy: at most one request a second from the
    # whole deployment. A self-hosted provider may allow more (0 = no spacing).
    GEOCODER_MIN_INTERVAL = 1.0
    GEOCODER_TIMEOUT = 5.0  # seconds, a total deadline per lookup (rate-limit wait included)
    # Without REDIS_URL: the file through which the processes of this host space their
    # provider requests (None: geocoder-slot in the instance folder).
    GEOCODER_LIMITER_FILE: str | None = None
    PLACES_CACHE_TTL = 24 * 3600  # seconds a coarse cell's answer is reused
    PLACES_REDIS_PREFIX = "mobile_api:geo:"  # Redis keys of the places cache and provider limiter

    PURGE_AFTER_DAYS = 14
    # Rows older than this are deleted by the purge run (see services/privacy.RETENTION).
    TELEMETRY_RETENTION_DAYS = 90
    DELIVERY_RETENTION_DAYS = 180

    RATELIMIT_ENABLED = True
    RATELIMIT_STORAGE_URI = "memory://"
    # Flask-Limiter would stamp X-RateLimit-* and Retry-After on every response of a
    # limited endpoint; Retry-After belongs on a 429 only (errors.py sets it there).
    RATELIMIT_HEADERS_ENABLED = False
    RATELIMIT_REGISTRATION = "60 per minute"  # per client IP
    RATELIMIT_DEVICE = "300 per minute"  # per device token
    RATELIMIT_PLACES = "60 per minute"  # per device token, on each places endpoint

    # Number of proxies in front of the app whose X-Forwarded-* headers are trusted.
    PROXY_FIX_X_FOR = 0
    PROXY_FIX_X_PROTO = 0
    # When set, GET /metrics answers only `Authorization: Bearer <METRICS_TOKEN>`.
    METRICS_TOKEN: str | None = None

    LOG_LEVEL = "INFO"

    # Push transports: modules of mobile_api.push's seam (see its docstring).
    PUSH_TRANSPORTS: tuple[str, ...] = ("mobile_api.push.fcm", "mobile_api.push.apns")
    # APNs (token-based auth). Unset key, key id, team or topic → no APNs transport,
    # and devices with APNs tokens count as no_push_token.
    APNS_KEY_FILE: str | None = None  # the .p8 signing key
    APNS_KEY_ID: str | None = None
    APNS_TEAM_ID: str | None = None
    APNS_TOPIC: str | None = None  # the app's bundle id
    APNS_ENDPOINT = "https://api.push.apple.com"
    APNS_SANDBOX_ENDPOINT = "https://api.sandbox.push.apple.com"
    APNS_CA_FILE: str | None = None  # a CA bundle to trust instead of the system's (tests)
    APNS_TIMEOUT = 10.0
    # The staff console (/console/).
    CONSOLE_BASE_URL = "http://127.0.0.1:8000"  # where one-time sign-in links point
    CONSOLE_LINK_TTL_HOURS = 72  # a one-time link expires unused after this
    CONSOLE_IDLE_MINUTES = 30  # a session unused this long is over
    CONSOLE_SESSION_HOURS = 12  # and any session this old
    # Fernet key sealing staff TOTP secrets at rest; unset, one is derived from SECRET_KEY.
    CONSOLE_TOTP_KEY: str | None = None
    # Failed sign-ins allowed per client IP, and per email, in a moving window.
    CONSOLE_SIGN_IN_LIMIT_IP = "20 per 15 minutes"
    CONSOLE_SIGN_IN_LIMIT_EMAIL = "5 per 15 minutes"

    API_TITLE = "mobile_api"
    API_VERSION = __version__
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "docs"
    # None: flask-smorest's own page (CDN assets, inline script) is off; mobile_api/docs.py
    # serves /docs from the vendored, pinned assets instead.
    OPENAPI_SWAGGER_UI_URL: str | None = None
    API_SPEC_OPTIONS = {
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (role-bearing) or a device token.",
                }
            }
        }
    }


# Environment variable → (config key, parser). Only these are read.
def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


_ENVIRONMENT: dict[str, tuple[str, Any]] = {
    "SECRET_KEY": ("SECRET_KEY", str),
    "DATABASE_URL": ("SQLALCHEMY_DATABASE_URI", str),
    "CELERY_BROKER_URL": ("CELERY_BROKER_URL", str),
    "REDIS_URL": ("REDIS_URL", str),
    "FCM_CREDENTIALS": ("FCM_CREDENTIALS", str),
    "FCM_PROJECT_ID": ("FCM_PROJECT_ID", str),
    "FCM_ENDPOINT": ("FCM_ENDPOINT", str),
    "FCM_TIMEOUT": ("FCM_TIMEOUT", float),
    "PUSH_MAX_ATTEMPTS": ("PUSH_MAX_ATTEMPTS", int),
    "PUSH_RETRY_BASE_SECONDS": ("PUSH_RETRY_BASE_SECONDS", float),
    "PUSH_RETRY_MAX_SECONDS": ("PUSH_RETRY_MAX_SECONDS", float),
    "DISPATCH_CHUNK_SIZE": ("DISPATCH_CHUNK_SIZE", int),
    "DISPATCH_ENUMERATE_BATCH": ("DISPATCH_ENUMERATE_BATCH", int),
    "DISPATCH_CLAIM_LEASE_SECONDS": ("DISPATCH_CLAIM_LEASE_SECONDS", float),
    "DISPATCH_POLL_SECONDS": ("DISPATCH_POLL_SECONDS", float),
    "DISPATCH_CAMPAIGN_NICE": ("DISPATCH_CAMPAIGN_NICE", int),
    "DATABASE_PING_AFTER_IDLE_SECONDS": ("DATABASE_PING_AFTER_IDLE_SECONDS", float),
    "DISPATCH_STALL_SECONDS": ("DISPATCH_STALL_SECONDS", float),
    "PUSH_RETRY_WINDOW_SECONDS": ("PUSH_RETRY_WINDOW_SECONDS", float),
    "PUSH_BREAKER_MAX_SECONDS": ("PUSH_BREAKER_MAX_SECONDS", float),
    "FCM_MAX_MESSAGES_PER_SECOND": ("FCM_MAX_MESSAGES_PER_SECOND", float),
    "APNS_MAX_MESSAGES_PER_SECOND": ("APNS_MAX_MESSAGES_PER_SECOND", float),
    "FCM_LIMITER_FILE": ("FCM_LIMITER_FILE", str),
    "CELERY_VISIBILITY_TIMEOUT": ("CELERY_VISIBILITY_TIMEOUT", float),
    "CELERY_QUEUE": ("CELERY_QUEUE", str),
    "GEOCODER_DOMAIN": ("GEOCODER_DOMAIN", str),
    "GEOCODER_SCHEME": ("GEOCODER_SCHEME", str),
    "GEOCODER_USER_AGENT": ("GEOCODER_USER_AGENT", str),
    "LOCATION_PRECISION_DECIMALS": ("LOCATION_PRECISION_DECIMALS", int),
    "GEOCODER_MIN_INTERVAL": ("GEOCODER_MIN_INTERVAL", float),
    "GEOCODER_TIMEOUT": ("GEOCODER_TIMEOUT", float),
    "GEOCODER_LIMITER_FILE": ("GEOCODER_LIMITER_FILE", str),
    "PLACES_CACHE_TTL": ("PLACES_CACHE_TTL", int),
    "PLACES_REDIS_PREFIX": ("PLACES_REDIS_PREFIX", str),
    "PURGE_AFTER_DAYS": ("PURGE_AFTER_DAYS", int),
    "TELEMETRY_RETENTION_DAYS": ("TELEMETRY_RETENTION_DAYS", int),
    "DELIVERY_RETENTION_DAYS": ("DELIVERY_RETENTION_DAYS", int),
    "RATELIMIT_ENABLED": ("RATELIMIT_ENABLED", _bool),
    "RATELIMIT_STORAGE_URI": ("RATELIMIT_STORAGE_URI", str),
    "PROXY_FIX_X_FOR": ("PROXY_FIX_X_FOR", int),
    "PROXY_FIX_X_PROTO": ("PROXY_FIX_X_PROTO", int),
    "METRICS_TOKEN": ("METRICS_TOKEN", str),
    "LOG_LEVEL": ("LOG_LEVEL", str),
    "QUIET_HOURS": ("QUIET_HOURS", str),
    "PROMO_FREQUENCY_CAP": ("PROMO_FREQUENCY_CAP", str),
    "DISPATCH_COUNTDOWN_MAX_SECONDS": ("DISPATCH_COUNTDOWN_MAX_SECONDS", float),
    "SECRET_KEY_FILE": ("SECRET_KEY_FILE", str),
    "HEARTBEAT_FILE": ("HEARTBEAT_FILE", str),
    "APNS_KEY_FILE": ("APNS_KEY_FILE", str),
    "APNS_KEY_ID": ("APNS_KEY_ID", str),
    "APNS_TEAM_ID": ("APNS_TEAM_ID", str),
    "APNS_TOPIC": ("APNS_TOPIC", str),
    "APNS_ENDPOINT": ("APNS_ENDPOINT", str),
    "APNS_SANDBOX_ENDPOINT": ("APNS_SANDBOX_ENDPOINT", str),
    "APNS_CA_FILE": ("APNS_CA_FILE", str),
    "APNS_TIMEOUT": ("APNS_TIMEOUT", float),
    "NOTIFY_POLL_SECONDS": ("NOTIFY_POLL_SECONDS", float),
    "NOTIFY_IDEMPOTENCY_WAIT_SECONDS": ("NOTIFY_IDEMPOTENCY_WAIT_SECONDS", float),
    "CONSOLE_BASE_URL": ("CONSOLE_BASE_URL", str),
    "CONSOLE_LINK_TTL_HOURS": ("CONSOLE_LINK_TTL_HOURS", int),
    "CONSOLE_IDLE_MINUTES": ("CONSOLE_IDLE_MINUTES", int),
    "CONSOLE_SESSION_HOURS": ("CONSOLE_SESSION_HOURS", int),
    "CONSOLE_TOTP_KEY": ("CONSOLE_TOTP_KEY", str),
    "CONSOLE_SIGN_IN_LIMIT_IP": ("CONSOLE_SIGN_IN_LIMIT_IP", str),
    "CONSOLE_SIGN_IN_LIMIT_EMAIL": ("CONSOLE_SIGN_IN_LIMIT_EMAIL", str),
}


def from_environment(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Read the documented environment variables into config keys."""
    environ = dict(os.environ) if environ is None else environ
    settings: dict[str, Any] = {}
    for variable, (key, parse) in _ENVIRONMENT.items():
        raw = environ.get(variable)
        if raw is None or raw == "":
            continue
        try:
            settings[key] = parse(raw)
        except ValueError as exc:
            raise RuntimeError(f"environment variable {variable} is invalid: {exc}") from exc
    return settings
