# The app image: torch, LeRobot, Flower and this project, installed from uv.lock. It runs an operator's SuperNode
# (supernode/entrypoint.sh: dataset check, then flower-supernode, which starts the ClientApps) and, in its own
# container, the ServerApp executor (superlink/superexec-entrypoint.sh). Build it with `docker compose build`.
FROM debian:trixie-slim

ARG UV_VERSION=0.13.9
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH

# Debian's Python 3.13 (uv.lock covers 3.12 and 3.13), the CA store, tini to reap the per-message processes, and
# FFmpeg's and Python's shared libraries, which torchcodec (LeRobot's default video decoder) loads; PyAV
# brings its own.
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates python3 python3-venv libpython3.13 tini \
       libavcodec61 libavformat61 libavutil59 libswscale8 libswresample5 libavdevice61 libavfilter10 >/dev/null
# Extra CAs (a TLS-intercepting proxy's), trusted before anything is downloaded over TLS; see the README there.
COPY images/ca-certificates/ /usr/local/share/ca-certificates/fedvla/
RUN update-ca-certificates >/dev/null \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --quiet --no-cache-dir "uv==${UV_VERSION}" \
    && ln -s /opt/uv/bin/uv /usr/local/bin/uv

# Dependencies first, from the lock alone: a change to the app's code does not reinstall them.
WORKDIR /opt/fedvla
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project --python /usr/bin/python3
COPY README.md ./
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --python /usr/bin/python3 \
    && python -c "import app.cli, flwr, lerobot, torch"
COPY images/healthcheck.py /usr/local/bin/healthcheck
COPY supernode/entrypoint.sh /usr/local/bin/supernode-entrypoint
COPY superlink/superexec-entrypoint.sh /usr/local/bin/superexec-entrypoint
COPY deploy/submit.sh /usr/local/bin/submit-run

# An unprivileged user; its state (embedded artifacts, Hub cache, node logs, run outputs) under /var/lib/fedvla,
# where compose mounts volumes (created here so they start owned by this user).
RUN useradd --uid 1000 --create-home --home-dir /home/fedvla fedvla \
    && mkdir -p /var/lib/fedvla/home /var/lib/fedvla/outputs /var/lib/fedvla/secret \
    && chown -R fedvla:fedvla /var/lib/fedvla
ENV FEDVLA_HOME=/var/lib/fedvla/home \
    HF_HOME=/var/lib/fedvla/home/huggingface
USER fedvla
WORKDIR /var/lib/fedvla
ENTRYPOINT ["tini", "--"]
CMD ["supernode-entrypoint"]
