#!/bin/sh
# Submits this image's app to the compose federation with `flwr run` and waits for the run to end; exits 0 only
# when Flower reports it finished:completed. What `docker compose up` runs once (the `submit` service); from a
# host with the project installed, `flwr run . fedvla-compose --stream` does the same (README: "Submitting runs").
#   FEDVLA_SUPERLINK_API   the SuperLink's Control API                     superlink:8000
#   FEDVLA_RUN_CONFIG      run-config, 'key=value ...' (TOML values), appended to FEDVLA_RUN_CONFIG_BASE
#   FEDVLA_INSECURE / FEDVLA_ROOT_CERTIFICATES   as for the other services
set -eu
. /usr/local/bin/flwr-connection

RUN_CONFIG="${FEDVLA_RUN_CONFIG_BASE:-} ${FEDVLA_RUN_CONFIG:-}"
run_id=$(flwr run /opt/fedvla fedvla-compose --run-config "$RUN_CONFIG" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["run-id"])')
echo "submit: run $run_id submitted; following its log" >&2
flwr log "$run_id" fedvla-compose --stream || true   # ends when the run ends
status=$(flwr ls fedvla-compose --run-id "$run_id" --format json | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])')
echo "submit: run $run_id $status" >&2
[ "$status" = "finished:completed" ]
