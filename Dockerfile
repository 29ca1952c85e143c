# syntax=docker/dockerfile:1
# mobile_api: the web server image (the dispatcher runs from the same image).
#
#   docker build -t mobile_api .
#   docker run --rm -e DATABASE_URL=... -e SECRET_KEY=... mobile_api flask --app wsgi db upgrade
#   docker run -d -p 8000:8000 -e DATABASE_URL=... -e SECRET_KEY=... -e WEB_CONCURRENCY=4 mobile_api
#   docker run -d -e DATABASE_URL=... -e SECRET_KEY=... mobile_api flask --app wsgi dispatch worker
#
# Migrations are an explicit step (the first `docker run` above), run once per
# release before the new web servers start; the web server never migrates.

# An exact release, not a moving tag: rebuilds get the same Python and Debian. (Pin the
# digest too, python:X@sha256:..., where the registry can be reached to look it up.)
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Every runtime dependency ships a manylinux wheel (psycopg[binary] included),
# so no compiler is needed even here.
RUN /opt/venv/bin/pip install -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WEB_CONCURRENCY=2 \
    PORT=8000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    HEARTBEAT_FILE=/tmp/mobile_api.heartbeat
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY --chown=root:root wsgi.py gunicorn.conf.py ./
COPY --chown=root:root mobile_api ./mobile_api
COPY --chown=root:root models ./models
COPY --chown=root:root migrations ./migrations
# The code is read-only for the app user; only instance/ (the embedded SQLite
# default) is writable. Use DATABASE_URL (PostgreSQL) in production.
RUN python -m compileall -q mobile_api models migrations wsgi.py gunicorn.conf.py \
    && mkdir -p /app/instance /tmp/prometheus && chown app:app /app/instance /tmp/prometheus
USER 10001:10001
EXPOSE 8000
# By role, as the container runs it: the web server answers /healthz on $PORT; a
# dispatcher (flask dispatch worker, celery worker) touched HEARTBEAT_FILE lately.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "mobile_api.healthcheck"]
# exec: gunicorn becomes PID 1 and receives SIGTERM from `docker stop`.
# The app writes its own JSON access log to stderr, so gunicorn's is left off.
# /metrics aggregates the workers through prometheus_client's multiprocess files,
# which must start empty with each server.
CMD ["sh", "-c", "rm -rf \"$PROMETHEUS_MULTIPROC_DIR\" && mkdir -p \"$PROMETHEUS_MULTIPROC_DIR\" && exec gunicorn --config gunicorn.conf.py --bind 0.0.0.0:${PORT} wsgi:app"]
