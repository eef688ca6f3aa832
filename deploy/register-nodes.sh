#!/bin/sh
# The federation owner's step of SuperNode authentication, as `docker compose up` runs it once (the `register`
# service): registers the public key of every node named in FEDVLA_NODE_NAMES (KEYS_DIR/<name>.pub) with the
# SuperLink. Keys already registered stay as they are, so it can run at every start. By hand, for an operator's
# key: `flwr supernode register operator.pub <connection>`; revoke with `flwr supernode unregister <node-id>`.
#   FEDVLA_NODE_NAMES   the nodes to register                        operator_0 operator_1
#   FEDVLA_KEYS_DIR     where their .pub files are                   /var/lib/fedvla/keys
set -eu
if [ "${FEDVLA_INSECURE:-false}" = true ] || [ "${FEDVLA_SUPERNODE_AUTH:-true}" != true ]; then
  echo "register: SuperNode authentication is off; nothing to register" >&2
  exit 0
fi
. /usr/local/bin/flwr-connection
KEYS_DIR=${FEDVLA_KEYS_DIR:-/var/lib/fedvla/keys}
for name in ${FEDVLA_NODE_NAMES:-operator_0 operator_1}; do
  public="$KEYS_DIR/$name.pub"
  [ -s "$public" ] || { echo "register: error: no public key $public (the certs service makes it)" >&2; exit 2; }
  if out=$(flwr supernode register "$public" fedvla-compose --name "$name" 2>&1); then
    echo "register: $name registered" >&2
  elif printf '%s' "$out" | grep -q "already in use"; then
    echo "register: $name is registered already" >&2
  else
    echo "register: error: registering $name failed: $out" >&2
    exit 1
  fi
done
