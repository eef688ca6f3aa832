#!/bin/sh
# Sourced by submit.sh and register-nodes.sh: a `flwr` connection named fedvla-compose to the SuperLink's Control
# API in a fresh FLWR_HOME.
#   FEDVLA_SUPERLINK_API   the SuperLink's Control API                     superlink:8000
#   FEDVLA_INSECURE / FEDVLA_ROOT_CERTIFICATES   as for the other services
export FLWR_HOME="${FLWR_HOME:-$(mktemp -d)}"
{
  printf '[superlink]\ndefault = "fedvla-compose"\n\n[superlink.fedvla-compose]\n'
  printf 'address = "%s"\n' "${FEDVLA_SUPERLINK_API:-superlink:8000}"
  if [ "${FEDVLA_INSECURE:-false}" = true ]; then
    printf 'insecure = true\n'
  else
    printf 'root-certificates = "%s"\n' "${FEDVLA_ROOT_CERTIFICATES:-/var/lib/fedvla/certs/ca.crt}"
  fi
} >"$FLWR_HOME/config.toml"
