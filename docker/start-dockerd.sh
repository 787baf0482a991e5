#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine: use the one that runs, else start dockerd.
#
# dockerd runs with --iptables=false (no NAT rules on the host; containers on a compose
# network still reach each other, published ports go through docker-proxy) and keeps its
# data and exec roots under $FEDPROMPT_DOCKER_ROOT (default /tmp/fedprompt-docker).
# Exit status: 0 when an engine answers, 1 when none can be started (the reason is printed).
set -euo pipefail

ROOT=${FEDPROMPT_DOCKER_ROOT:-/tmp/fedprompt-docker}
WAIT_S=${FEDPROMPT_DOCKER_WAIT_S:-60}

if ! command -v docker >/dev/null 2>&1; then
    echo "start-dockerd: no docker CLI (apt-get install docker.io)" >&2
    exit 1
fi
if docker info >/dev/null 2>&1; then
    echo "start-dockerd: an engine is already running"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-dockerd: no engine runs and there is no dockerd (apt-get install docker.io)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "start-dockerd: starting dockerd needs root" >&2
    exit 1
fi

mkdir -p "$ROOT/data" "$ROOT/exec"
# a pid file left by an engine of an earlier boot would read below as "this engine exited"
if [ -f "$ROOT/dockerd.pid" ] && ! kill -0 "$(cat "$ROOT/dockerd.pid")" 2>/dev/null; then
    rm -f "$ROOT/dockerd.pid"
fi
echo "start-dockerd: starting dockerd (log: $ROOT/dockerd.log)"
# setsid: the engine outlives this script and is not in its process group.
setsid dockerd \
    --iptables=false \
    --data-root "$ROOT/data" \
    --exec-root "$ROOT/exec" \
    --pidfile "$ROOT/dockerd.pid" \
    --host unix:///var/run/docker.sock \
    >"$ROOT/dockerd.log" 2>&1 </dev/null &

deadline=$((SECONDS + WAIT_S))
until docker info >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "start-dockerd: dockerd did not answer within ${WAIT_S}s; last log lines:" >&2
        tail -n 20 "$ROOT/dockerd.log" >&2 || true
        exit 1
    fi
    # the pid file is this engine's: a stale one was removed above
    if [ -f "$ROOT/dockerd.pid" ] && ! kill -0 "$(cat "$ROOT/dockerd.pid" 2>/dev/null || echo 0)" 2>/dev/null; then
        echo "start-dockerd: dockerd exited; last log lines:" >&2
        tail -n 20 "$ROOT/dockerd.log" >&2 || true
        exit 1
    fi
    sleep 1
done
echo "start-dockerd: engine ready (pid $(cat "$ROOT/dockerd.pid"))"
