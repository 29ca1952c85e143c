"""gunicorn settings of the web server: bin/serve, the Docker image and bench/ use them.

WEB_CONCURRENCY worker processes (default 2), each with GUNICORN_THREADS threads
(default 4): a thread serves another request while one waits on the database, and
clients keep their connections alive. On the 2-core machine of bench/RESULTS.md
this served ×1.3–2.2 the registrations of the same two workers without threads.
"""

import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
keepalive = 5  # seconds an idle client connection stays open
