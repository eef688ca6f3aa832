#!/bin/sh
# An operator's SuperNode: `fedvla node` starts the node's warm worker, which checks the dataset against the
# federation's model first (exit 2 and one line naming the problem if it does not fit; the container then stays
# down); otherwise flower-supernode starts beside it, its ClientApps hand each message to the worker, and the
# node's Prometheus metrics are served.
# Settings (supernode/node.env.example documents each):
#   FEDVLA_SUPERLINK (host:9092), FEDVLA_DATASET (hf:<repo>, a mounted directory, or embedded:operator-<i>),
#   FEDVLA_NODE_NAME, FEDVLA_MODEL, FEDVLA_FPS, FEDVLA_CAMERAS, FEDVLA_CAMERA_MAP,
#   FEDVLA_ROOT_CERTIFICATES or FEDVLA_INSECURE=true, FEDVLA_AUTH_KEY, FEDVLA_METRICS_PORT (9400)
set -eu
: "${FEDVLA_SUPERLINK:?set FEDVLA_SUPERLINK to the SuperLink's Fleet API address, host:9092}"
: "${FEDVLA_DATASET:?set FEDVLA_DATASET to hf:<owner>/<name> or the path of a mounted LeRobot dataset}"

set -- --superlink "$FEDVLA_SUPERLINK" --dataset-uri "$FEDVLA_DATASET" \
  --name "${FEDVLA_NODE_NAME:-$(hostname)}" --metrics-port "${FEDVLA_METRICS_PORT:-9400}" \
  --clientappio-port 9094
[ -n "${FEDVLA_MODEL:-}" ] && set -- "$@" --model "$FEDVLA_MODEL"
[ -n "${FEDVLA_FPS:-}" ] && set -- "$@" --fps "$FEDVLA_FPS"
[ -n "${FEDVLA_CAMERAS:-}" ] && set -- "$@" --cameras "$FEDVLA_CAMERAS"
[ -n "${FEDVLA_CAMERA_MAP:-}" ] && set -- "$@" --camera-map "$FEDVLA_CAMERA_MAP"
if [ "${FEDVLA_INSECURE:-false}" = true ]; then
  # SuperNode authentication needs TLS: a key is of no use on a plain connection
  set -- "$@" --insecure
else
  [ -n "${FEDVLA_AUTH_KEY:-}" ] && set -- "$@" --auth-private-key "$FEDVLA_AUTH_KEY"
  set -- "$@" --root-certificates "${FEDVLA_ROOT_CERTIFICATES:-/var/lib/fedvla/certs/ca.crt}"
fi
exec fedvla node "$@"
