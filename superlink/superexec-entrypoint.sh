#!/bin/sh
# The ServerApp executor: flower-superexec pulls each run submitted to the SuperLink and starts its ServerApp
# (one `flwr-serverapp` process per run) from this image, which holds the app's dependencies. The fedvla
# exporter around it serves the ServerApps' round metrics on FEDVLA_METRICS_PORT (prometheus_client's
# multiprocess mode: the short-lived ServerApp processes write, the exporter reads).
#   FEDVLA_SUPERLINK_API  the SuperLink's Runtime API, host:port                      superlink:8000
#   FEDVLA_SECRET_FILE    the secret the SuperLink generated (shared volume)          /var/lib/fedvla/secret/superexec.secret
#   FEDVLA_ROOT_CERTIFICATES  CA certificate of the SuperLink's TLS certificate       (with FEDVLA_INSECURE unset)
#   FEDVLA_INSECURE       true: the SuperLink runs without TLS
#   FEDVLA_METRICS_PORT   Prometheus exporter                                          9401
set -eu
API=${FEDVLA_SUPERLINK_API:-superlink:8000}
SECRET_FILE=${FEDVLA_SECRET_FILE:-/var/lib/fedvla/secret/superexec.secret}
METRICS_PORT=${FEDVLA_METRICS_PORT:-9401}

if [ "${FEDVLA_INSECURE:-false}" = true ]; then
  set -- --insecure
else
  ROOT=${FEDVLA_ROOT_CERTIFICATES:-/var/lib/fedvla/certs/ca.crt}
  [ -s "$ROOT" ] || { echo "serverapp: error: no CA certificate at $ROOT; set FEDVLA_ROOT_CERTIFICATES, or FEDVLA_INSECURE=true" >&2; exit 2; }
  set -- --root-certificates "$ROOT"
fi
for _ in $(seq 60); do [ -s "$SECRET_FILE" ] && break; sleep 1; done
[ -s "$SECRET_FILE" ] || { echo "serverapp: error: no SuperExec secret at $SECRET_FILE (the SuperLink writes it)" >&2; exit 2; }

exec python -m app.ops.exporter --port "$METRICS_PORT" --role serverapp -- \
  flower-superexec --runtime-api-address "$API" "$@" --superexec-auth-secret-file "$SECRET_FILE"
