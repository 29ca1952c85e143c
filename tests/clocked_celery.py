"""The deployment's Celery app, for tests whose worker and beat processes share the test's clock.

`celery --app tests.clocked_celery:celery worker` (or `beat`): wsgi's app, but the service's
clock offset is read from TEST_CLOCK_FILE (written by models.base.share_clock in the
test) and beat sweeps every TEST_SWEEP_SECONDS instead of every 30 s. Production starts
`wsgi.celery`, which does neither.
"""

from __future__ import annotations

import os
from pathlib import Path

from mobile_api import tasks
from models.base import follow_clock
from wsgi import app, celery

__all__ = ["app", "celery"]

follow_clock(Path(os.environ["TEST_CLOCK_FILE"]))
celery.conf.beat_schedule["dispatch-sweep"]["schedule"] = float(
    os.environ.get("TEST_SWEEP_SECONDS", tasks.SWEEP_SECONDS)
)
