# syntax=docker/dockerfile:1
#
# asyncgate's container image.
#
#   docker build -t asyncgate .
#   docker run --rm -p 8080:8080 --stop-timeout 45 \
#     -e ASYNCGATE_UPSTREAM=http://model-server:8000 \
#     -v asyncgate-data:/var/lib/asyncgate asyncgate
#
# Configuration comes from ASYNCGATE_<SECTION>_<KEY> variables (ASYNCGATE_UPSTREAM,
# ASYNCGATE_STORE_REDIS_URL, ASYNCGATE_LIMITS_MAX_INFLIGHT, ...) and, optionally, a mounted file
# named on the command line, which replaces CMD:
#
#   docker run ... -v ./config.yaml:/etc/asyncgate/config.yaml:ro asyncgate \
#     serve --host 0.0.0.0 --config /etc/asyncgate/config.yaml
#
# The embedded store writes under /var/lib/asyncgate (mount a volume there); with
# ASYNCGATE_STORE_REDIS_URL set it is not used. After SIGTERM asyncgate drains in-flight runs for
# shutdown.drain_timeout (30 s by default): give it longer than that to stop (--stop-timeout,
# compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds).

ARG PYTHON_VERSION=3.11

# ---- builder: compilers and pip live here only -------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS builder

# Wheels exist for every dependency on amd64 and arm64; the compilers are the fallback for a
# platform or release without one, and never reach the final image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

# pip compiles every module to bytecode at install time, so the read-only runtime never needs to.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A virtualenv at the path it will have in the final stage, so its scripts' shebangs stay valid.
RUN python -m venv /opt/asyncgate
ENV PATH=/opt/asyncgate/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (not editable) install; the speed extra brings uvloop and hiredis, which uvicorn and redis-py
# pick up by themselves. The cache mount keeps downloads between builds without storing them in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[speed]" \
    && pip uninstall -y pip setuptools wheel \
    && asyncgate --version

# ---- runtime: the interpreter, the virtualenv and nothing else -----------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

LABEL org.opencontainers.image.title="asyncgate" \
      org.opencontainers.image.description="A reverse proxy that gives any synchronous HTTP endpoint an asynchronous mode." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONFAULTHANDLER=1 \
    PATH=/opt/asyncgate/bin:$PATH

# A fixed numeric UID/GID, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 asyncgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin asyncgate \
    && mkdir -p /var/lib/asyncgate /etc/asyncgate \
    && chown 10001:10001 /var/lib/asyncgate

COPY --from=builder /opt/asyncgate /opt/asyncgate

# The embedded store's default data_dir, ./asyncgate-data, resolves under this volume-worthy
# directory. It is not set through ASYNCGATE_STORE_DATA_DIR because a variable would silently
# override the data_dir of a mounted configuration file.
WORKDIR /var/lib/asyncgate
USER 10001:10001
EXPOSE 8080

# curl is not in the slim image; the standard library does the probe. urlopen raises on any
# non-2xx answer or a refused connection, which fails the check. ASYNCGATE_SERVER_PORT, if set,
# moves the probe with the server.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_asyncgate/healthz' % os.environ.get('ASYNCGATE_SERVER_PORT', '8080'), timeout=2)"]

# Exec form, not shell form: asyncgate runs as PID 1 and receives SIGTERM itself. A shell form
# (`ENTRYPOINT asyncgate ...`) would wrap it in /bin/sh -c, which does not forward signals, so the
# graceful drain would never start and the runtime would SIGKILL the gateway after its timeout.
ENTRYPOINT ["asyncgate"]
CMD ["serve", "--host", "0.0.0.0"]
