#!/usr/bin/env bash
# Print the name of a Python base image that services/Dockerfile can build FROM, making sure
# it exists locally first. Logs go to stderr; stdout is only the image name.
#
#   1. $PYTHON_IMAGE (default python:3.12-slim), if it is already here or can be pulled;
#   2. otherwise a local image built from Debian packages with debootstrap (root needed;
#      debootstrap itself is installed with apt-get when it is missing), with this
#      machine's CA bundle inside so that pip works in builds behind a proxy.
# It is idempotent: an image that exists is used as it is, and builds are serialised.
set -euo pipefail

wanted="${PYTHON_IMAGE:-python:3.12-slim}"
local_image="${MAILLAB_LOCAL_BASE_IMAGE:-maillab/python-base:bookworm}"
suite="${MAILLAB_DEBIAN_SUITE:-bookworm}"
ca_bundle="${MAILLAB_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

say() { echo "base-image: $*" >&2; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }

if exists "$wanted"; then echo "$wanted"; exit 0; fi
if timeout 300 docker pull --quiet "$wanted" >/dev/null 2>&1; then echo "$wanted"; exit 0; fi
say "$wanted is not here and cannot be pulled; using $local_image, built from Debian packages"

exec 9>"${TMPDIR:-/tmp}/maillab-base-image.lock"
flock 9   # another build in progress: wait for it, then reuse its image
if exists "$local_image"; then echo "$local_image"; exit 0; fi

if [ "$(id -u)" -ne 0 ]; then
  say "error: building $local_image with debootstrap needs root; run: sudo $0"
  exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  if ! command -v apt-get >/dev/null 2>&1; then
    say "error: debootstrap is needed to build $local_image; install it with your package manager, then run make again"
    exit 1
  fi
  say "installing debootstrap (apt-get)"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >&2; then
    say "error: apt-get could not install debootstrap (see above); run: apt-get install debootstrap"
    exit 1
  fi
fi

root="$(mktemp -d "${TMPDIR:-/tmp}/maillab-rootfs.XXXXXX")"
trap 'rm -rf "$root"' EXIT
say "debootstrap $suite into $root (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$root" >&2
if [ -f "$ca_bundle" ]; then
  cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
fi
# What a runtime image does not need: package caches, docs, man pages, translations.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
       "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  - "$local_image" >&2
say "built $local_image"
echo "$local_image"
