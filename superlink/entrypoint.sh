#!/bin/sh
# The federation's coordinator: flower-superlink in `--isolation process` mode (the ServerApp runs in the
# separate serverapp container, see superexec-entrypoint.sh), under the fedvla exporter (process metrics on
# FEDVLA_METRICS_PORT). Configuration, all optional, with defaults:
#   FEDVLA_FLEET_PORT     Fleet API (gRPC), where SuperNodes connect                       9092
#   FEDVLA_API_PORT       Control API (`flwr run/ls/log`) and Runtime API (ServerApp), HTTP  8000
#   FEDVLA_METRICS_PORT   Prometheus exporter                                              9402
#   FEDVLA_STATE_DIR      the SuperLink's state database (runs, nodes): keep it on a volume /var/lib/fedvla/state
#   FEDVLA_SECRET_FILE    shared secret of SuperLink and ServerApp executor; generated if missing
#   FEDVLA_CERTS_DIR      ca.crt, server.pem, server.key for TLS                           /var/lib/fedvla/certs
#   FEDVLA_INSECURE       true: plain gRPC/HTTP without TLS (a workstation or a private network only)
#   FEDVLA_SUPERNODE_AUTH true: only SuperNodes whose keys are registered (`flwr supernode register`) join  true
set -eu
FLEET_PORT=${FEDVLA_FLEET_PORT:-9092}
API_PORT=${FEDVLA_API_PORT:-8000}
METRICS_PORT=${FEDVLA_METRICS_PORT:-9402}
STATE_DIR=${FEDVLA_STATE_DIR:-/var/lib/fedvla/state}
SECRET_FILE=${FEDVLA_SECRET_FILE:-/var/lib/fedvla/secret/superexec.secret}
CERTS_DIR=${FEDVLA_CERTS_DIR:-/var/lib/fedvla/certs}

if [ "${FEDVLA_INSECURE:-false}" = true ]; then
  echo "superlink: WARNING: FEDVLA_INSECURE=true: the Fleet and Control APIs run without TLS" >&2
  set -- --insecure
  CONTROL="--flower-insecure"
else
  for file in ca.crt server.pem server.key; do
    if [ ! -s "$CERTS_DIR/$file" ]; then
      echo "superlink: error: TLS needs $CERTS_DIR/$file (see deploy/README.md); set FEDVLA_INSECURE=true to run without TLS" >&2
      exit 2
    fi
  done
  set -- --ssl-ca-certfile "$CERTS_DIR/ca.crt" --ssl-certfile "$CERTS_DIR/server.pem" --ssl-keyfile "$CERTS_DIR/server.key"
  CONTROL="--flower-root-certificates=$CERTS_DIR/ca.crt"  # the certificate names 127.0.0.1 (fedvla certs)
  if [ "${FEDVLA_SUPERNODE_AUTH:-true}" = true ]; then
    set -- "$@" --enable-supernode-auth
  else
    echo "superlink: WARNING: FEDVLA_SUPERNODE_AUTH=false: any SuperNode that trusts the CA may join" >&2
  fi
fi

# The Runtime API shares the Control API's port in Flower 1.39; this secret is what lets only our ServerApp
# executor use it. Generated once per deployment, never baked into an image.
if [ ! -s "$SECRET_FILE" ]; then
  (umask 077 && python3 -c "import secrets; print(secrets.token_urlsafe(32), end='')" >"$SECRET_FILE")
fi

mkdir -p "$STATE_DIR"
# The exporter also reports every SuperNode of the SuperLink's node list, asked of its own Control API.
exec python3 -m app.ops.exporter --port "$METRICS_PORT" --role superlink \
  --flower-control "127.0.0.1:$API_PORT" "$CONTROL" -- \
  flower-superlink "$@" \
  --isolation process \
  --superexec-auth-secret-file "$SECRET_FILE" \
  --database "$STATE_DIR/state.db" \
  --disable-runtime-dependency-installation \
  --fleet-api-address "0.0.0.0:$FLEET_PORT" \
  --host 0.0.0.0 --port "$API_PORT"
