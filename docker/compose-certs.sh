#!/usr/bin/env bash
# The certificate step of docker-compose.mtls.yml: one CA, one identity per volume.
#
#   compose-certs.sh SILO_ID...
#
# Keeps the federation CA (ca.crt, ca.key) in $CA_DIR, a volume that only this one-shot
# mounts, and writes each identity -- coordinator, clusterer, operator and every SILO_ID --
# into its own folder $IDENTITIES_DIR/<identity> (in compose: its own volume) as
#
#   tls.crt  the identity's certificate (`fedprompt certs`, by role)   0444
#   tls.key  its private key                                           0400
#   ca.crt   the federation CA certificate                             0444
#
# owned by $TLS_UID:$TLS_GID (the services' user, 10001) in a folder of mode 0500. A service
# mounts its own folder and nothing else, so no container but this one ever sees ca.key or
# another identity's key. Leaf keys are issued in a scratch folder that is deleted on exit.
#
# Runs again without harm: an identity whose folder holds its files is kept; a missing one
# is issued from the existing CA. A new CA (its volume was removed) re-issues every identity.
set -euo pipefail

CA_DIR=${CA_DIR:-/ca}
IDENTITIES_DIR=${IDENTITIES_DIR:-/identities}
TLS_UID=${TLS_UID:-10001}
TLS_GID=${TLS_GID:-10001}
FEDPROMPT=${FEDPROMPT:-fedprompt}

if [ "$#" -eq 0 ]; then
    echo "compose-certs: give the silo ids (e.g. clinic-0 clinic-1)" >&2
    exit 2
fi
identities=(coordinator clusterer operator "$@")

fresh_ca=0
if [ ! -s "$CA_DIR/ca.key" ] || [ ! -s "$CA_DIR/ca.crt" ]; then
    fresh_ca=1
fi
todo=()
for id in "${identities[@]}"; do
    dir="$IDENTITIES_DIR/$id"
    if [ "$fresh_ca" -eq 1 ] || [ ! -s "$dir/tls.key" ] || [ ! -s "$dir/tls.crt" ] \
        || [ ! -s "$dir/ca.crt" ]; then
        todo+=("$id")
    fi
done
if [ "${#todo[@]}" -eq 0 ]; then
    echo "compose-certs: every identity has its certificate"
    exit 0
fi

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$fresh_ca" -eq 0 ]; then
    cp "$CA_DIR/ca.crt" "$CA_DIR/ca.key" "$work/"
fi
silo_flags=()
for silo in "$@"; do
    silo_flags+=(--silo "$silo")
done
"$FEDPROMPT" certs --out "$work" --operator "${silo_flags[@]}"

mkdir -p "$CA_DIR"
chmod 0700 "$CA_DIR"
if [ "$fresh_ca" -eq 1 ]; then
    install -m 0600 "$work/ca.key" "$CA_DIR/ca.key"
    install -m 0644 "$work/ca.crt" "$CA_DIR/ca.crt"
    echo "compose-certs: new federation CA in $CA_DIR (no service mounts it)"
fi
for id in "${todo[@]}"; do
    dir="$IDENTITIES_DIR/$id"
    mkdir -p "$dir"
    chmod 0700 "$dir"
    rm -f "$dir/tls.crt" "$dir/tls.key" "$dir/ca.crt"
    install -o "$TLS_UID" -g "$TLS_GID" -m 0444 "$work/$id.crt" "$dir/tls.crt"
    install -o "$TLS_UID" -g "$TLS_GID" -m 0400 "$work/$id.key" "$dir/tls.key"
    install -o "$TLS_UID" -g "$TLS_GID" -m 0444 "$work/ca.crt" "$dir/ca.crt"
    chown "$TLS_UID:$TLS_GID" "$dir"
    chmod 0500 "$dir"
    echo "compose-certs: issued $id"
done
