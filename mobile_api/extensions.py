"""Extensions created at import time and bound to an app in create_app()."""

from __future__ import annotations

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from mobile_api.http_errors import Api
from models import Base

db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = Api()
# Limits are declared per endpoint; nothing is limited by default.
limiter = Limiter(key_func=get_remote_address, default_limits=[], strategy="moving-window")


def device_limit_key() -> str:
    """Rate-limit key of a device endpoint: the bearer credential, else the client IP."""
    header = request.headers.get("Authorization", "")
    # The tail of the header: enough to tell devices apart, never the whole
    # secret as a limiter key.
    return "device:" + header[-24:] if header else "ip:" + (get_remote_address() or "")
