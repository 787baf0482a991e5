#!/usr/bin/env bash
# Build the local base image every fedprompt Dockerfile starts from (their `ARG BASE`).
#
# No image registry is needed: `debootstrap --variant=minbase` writes a Debian bookworm root
# file system with Python 3.11 (the version the wheels are built for), and `docker import`
# turns it into an image. The Debian mirror is the one this machine's apt uses (else
# debootstrap's default). An existing image is kept unless FORCE=1.
#
# Usage: docker/build-base-image.sh [TAG]        (default: fedprompt-base:bookworm)
set -euo pipefail

TAG=${1:-${FEDPROMPT_BASE_IMAGE:-fedprompt-base:bookworm}}
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,passwd

if docker image inspect "$TAG" >/dev/null 2>&1 && [ "${FORCE:-0}" != 1 ]; then
    echo "build-base-image: $TAG exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base-image: apt-get install debootstrap" >&2; exit 1; }

mirror=""
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $3 == "'"$SUITE"'" {print $2; exit}' /etc/apt/sources.list)
fi

rootfs=$(mktemp -d /tmp/fedprompt-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "build-base-image: debootstrap $SUITE into $rootfs (${mirror:-default mirror})"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" ${mirror:+"$mirror"}

# Smaller image: no package lists, caches, docs or locales beyond C.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/log/*.log "$rootfs"/tmp/*
find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'C*' -exec rm -rf {} + 2>/dev/null || true

tar -C "$rootfs" --numeric-owner -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    --message "fedprompt base: debootstrap --variant=minbase $SUITE + $PACKAGES" \
    - "$TAG"
docker image inspect --format 'build-base-image: {{.RepoTags}} {{.Size}} bytes' "$TAG"
