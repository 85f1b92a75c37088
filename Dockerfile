# Noman: DockerHub push webhook -> Consul KV.
#
# The base is a build argument so the same file builds FROM the official slim
# Python image (default) or from a locally made stand-in (CI here has no
# registry: scripts/container-smoke passes BASE=localhost/python-base:bookworm).
# Nothing below relies on what only the official image has: the interpreter
# is always reached through the venv created here.
ARG BASE=docker.io/library/python:3.12-slim

# ---------------------------------------------------------------- build stage
FROM ${BASE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1

# Build tooling (pinned, hashed pip + build backend) in a venv of its own; it
# never reaches the runtime stage.
COPY requirements-build.lock /tmp/requirements-build.lock
RUN python3 -m venv /opt/build \
 && /opt/build/bin/python -m pip install --require-hashes --no-deps \
        -r /tmp/requirements-build.lock

# Runtime venv, created without pip (no installer ships in the image).
# Dependencies come before the code so that editing the package reuses this
# layer; only wheels are accepted, so no compiler is needed.
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv --without-pip /opt/venv \
 && /opt/build/bin/pip --python /opt/venv/bin/python install \
        --require-hashes --no-deps --only-binary=:all: -r /tmp/requirements.lock

# The package itself: build its wheel with the pinned backend, install it
# with --no-deps (its dependencies are exactly the lock above). pip compiles
# every module to bytecode here, since nothing can be written at run time.
COPY pyproject.toml README.md /src/
COPY noman /src/noman
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /tmp/dist /src \
 && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps --no-index /tmp/dist/*.whl \
 && /opt/venv/bin/python -c "import noman, noman.server.config"

# -------------------------------------------------------------- runtime stage
FROM ${BASE} AS runtime

# A fixed, unprivileged uid/gid that owns nothing in the image: the code and
# the venv stay root-owned and read-only for the process.
RUN groupadd --gid 10001 noman \
 && useradd --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin noman

COPY --from=build /opt/venv /opt/venv

# Configuration: a TOML file mounted at $NOMAN_CONFIG and/or environment
# variables (CONSUL_HTTP_ADDR overrides the file's Consul address,
# CONSUL_HTTP_TOKEN carries the token). The root filesystem may be read-only:
# no bytecode is written, gunicorn's worker heartbeat files and any temporary
# file go to /dev/shm (a tmpfs in every container runtime).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NOMAN_CONFIG=/etc/noman/noman.toml \
    NOMAN_BIND=0.0.0.0:8000 \
    NOMAN_WORKER_TMP_DIR=/dev/shm \
    TMPDIR=/dev/shm

USER 10001:10001
WORKDIR /
EXPOSE 8000

# Needs no curl and no shell: a stdlib HTTP GET of /healthz on $NOMAN_BIND's port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/noman", "healthcheck"]

# `noman serve` validates the configuration first (a mistake is one
# "noman: configuration error: ..." line and exit code 2, not a wall of worker
# tracebacks), then replaces itself with gunicorn (exec: gunicorn is PID 1 and
# gets the signals). gunicorn stops gracefully on SIGTERM (in-flight requests
# finish within its graceful_timeout); give `docker stop -t` at least that long.
STOPSIGNAL SIGTERM
CMD ["/opt/venv/bin/noman", "serve"]

# Labels last, so that changing VERSION/REVISION/CREATED does not rebuild
# any layer above.
ARG BASE
ARG VERSION=0.0.0.dev0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=
LABEL org.opencontainers.image.title="noman" \
      org.opencontainers.image.description="Turns 'a new container image was pushed' into 'the Nomad cluster is running it', through Consul." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="${BASE}"
