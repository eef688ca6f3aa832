#!/bin/sh
# Submits this image's app to the compose federation with `flwr run` and waits for the run to end; exits 0 only
# when Flower reports it finished:completed. What `docker compose up` runs once (the `submit` service); from a
# host with the project installed, `flwr run . fedvla-compose --stream` does the same (README: "Submitting runs").
#   FEDVLA_SUPERLINK_API   the SuperLink's Control API                     superlink:8000
#   FEDVLA_RUN_CONFIG      run-config, 'key=value ...' (TOML values), appended to FEDVLA_RUN_CONFIG_BASE
#   FEDVLA_SUBMIT_RECONNECT_SECONDS   how long the SuperLink may be unreachable in a row mid-run      600
#   FEDVLA_INSECURE / FEDVLA_ROOT_CERTIFICATES   as for the other services
set -eu
. /usr/local/bin/flwr-connection

# app.ops.submit follows the run across a SuperLink restart and fails in one line (README: "Submitting runs").
exec python3 -m app.ops.submit /opt/fedvla fedvla-compose \
  --run-config "${FEDVLA_RUN_CONFIG_BASE:-} ${FEDVLA_RUN_CONFIG:-}" \
  --reconnect-seconds "${FEDVLA_SUBMIT_RECONNECT_SECONDS:-600}"
