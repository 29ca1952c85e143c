"""CPU priority of campaign work: below web requests and notifications when cores are short.

A campaign to a million devices keeps a dispatcher busy for minutes; a helpdesk
notification posted meanwhile must not wait for a core behind it. The dispatcher's
campaign work runs at the niceness DISPATCH_CAMPAIGN_NICE (default 10; 0 leaves it
alone): the embedded dispatcher's campaign thread, and a Celery worker that consumes
campaign work but not the notification queue. On Linux niceness belongs to a thread
and is inherited by the threads (and processes) it starts; elsewhere it is the
process's. Raising it needs no privilege, lowering it again would, so it is only
ever raised, and only where nothing latency-bound runs after it.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_this_thread(nice: int) -> None:
    """Run the calling thread, and what it starts from now on, at niceness `nice` (0: as is)."""
    if nice <= 0:
        return
    # Linux: PRIO_PROCESS with a thread id is that thread alone.
    who = threading.get_native_id() if sys.platform == "linux" else 0
    try:
        if os.getpriority(os.PRIO_PROCESS, who) < nice:
            os.setpriority(os.PRIO_PROCESS, who, nice)
    except OSError:
        log.warning("could not lower the priority of campaign work to nice %s", nice, exc_info=True)
