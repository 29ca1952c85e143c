"""gunicorn settings of the web server: bin/serve, the Docker image and bench/ use them.

WEB_CONCURRENCY worker processes (default 2), sync unless GUNICORN_THREADS > 1 asks for
gthread workers. Measured on the 2-core machine of bench/RESULTS.md with 1,000,000 devices,
two sync workers served more and steadier requests than two workers of 4 threads, on both
databases: PostgreSQL registration 1,018 vs 666 req/s, check-in 1,061 vs 737; on SQLite the
threads only queued behind its single writer lock (p99 70-110 ms instead of 17 ms).
"""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
keepalive = 5  # seconds an idle client connection stays open (gthread only)

# gunicorn 25.1+ opens a control socket (for gunicornc) at one path per user,
# $XDG_RUNTIME_DIR/gunicorn.ctl or $HOME/.gunicorn/gunicorn.ctl, so every server the
# user runs would claim the same socket and gunicornc would reach whichever started
# last. Off unless GUNICORN_CONTROL_SOCKET names this deployment's own path.
_control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not _control_socket
if _control_socket:
    control_socket = _control_socket
