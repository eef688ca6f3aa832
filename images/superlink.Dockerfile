# The SuperLink image: Flower and the exporter's few packages from uv.lock, no torch, no LeRobot.
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
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/fedvla

RUN --mount=type=cache,target=/var/cache/apt,sharing=locked --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates python3 python3-venv tini >/dev/null
COPY images/ca-certificates/ /usr/local/share/ca-certificates/fedvla/
RUN update-ca-certificates >/dev/null \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --quiet --no-cache-dir "uv==${UV_VERSION}" \
    && ln -s /opt/uv/bin/uv /usr/local/bin/uv

WORKDIR /opt/fedvla
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --only-group superlink --no-install-project --python /usr/bin/python3 \
    && ! python -c "import torch" 2>/dev/null
# Only the modules the exporter needs (they import neither torch nor LeRobot).
COPY app/__init__.py app/errors.py app/telemetry.py app/metrics.py app/exporter.py ./app/
COPY images/healthcheck.py /usr/local/bin/healthcheck
COPY superlink/entrypoint.sh /usr/local/bin/superlink-entrypoint

RUN useradd --uid 1000 --create-home --home-dir /home/fedvla fedvla \
    && mkdir -p /var/lib/fedvla/state /var/lib/fedvla/secret /var/lib/fedvla/certs \
    && chown -R fedvla:fedvla /var/lib/fedvla
USER fedvla
WORKDIR /var/lib/fedvla
EXPOSE 9092 8000 9402
ENTRYPOINT ["tini", "--"]
CMD ["superlink-entrypoint"]
