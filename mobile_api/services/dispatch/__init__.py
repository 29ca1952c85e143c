"""The dispatcher's units of work, shared by the embedded worker and the Celery tasks.

By job:
- `enumerate`: a campaign's audience expanded, page by page, into `pending` delivery
  rows (one per campaign and device, unique), its cursor advanced in the same
  transaction.
- `send`: claim a chunk of due rows (consent and deliverability read in that query),
  hand it to the push service, record the outcomes.
- `handoff`: the deployment-wide send rate of each push provider, and the lease a
  dispatcher keeps on the rows it is handing over.
- `breaker`: while a push provider fails, its deliveries (every lane's) wait; others go on.
- `recovery`: claims left by a dead dispatcher (sent again, in-flight ones with the
  same collapse identity); campaigns whose Celery tasks were lost.
- `schedule`: the one scheduling contract of both dispatchers, "this work is due at T".

Callers import from here; the modules are how the code is organised, not an API.
"""

from .core import INTERRUPTED, UNFINISHED, Settings, lock_campaign, transport
from .enumerate import Batch, enumerate_batch
from .handoff import SendLimiter, SendPacing, send_limiter
from .ledger import backoff_seconds
from .recovery import (
    hold_recovery,
    note_progress,
    queue_recovery,
    release_lapsed_claims,
    resolve_interrupted,
    stalled,
)
from .schedule import Agenda, active_campaign_ids, agenda, due_at, has_work, next_due
from .send import (
    ChunkResult,
    collapse_id,
    finish_if_done,
    process_chunk,
    retry_deadline,
    run_campaign,
)

__all__ = [
    "INTERRUPTED",
    "UNFINISHED",
    "Agenda",
    "Batch",
    "ChunkResult",
    "SendLimiter",
    "SendPacing",
    "Settings",
    "active_campaign_ids",
    "agenda",
    "backoff_seconds",
    "collapse_id",
    "due_at",
    "enumerate_batch",
    "finish_if_done",
    "has_work",
    "hold_recovery",
    "lock_campaign",
    "next_due",
    "note_progress",
    "process_chunk",
    "queue_recovery",
    "release_lapsed_claims",
    "resolve_interrupted",
    "retry_deadline",
    "run_campaign",
    "send_limiter",
    "stalled",
    "transport",
]
