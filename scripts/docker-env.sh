#!/usr/bin/env bash
# A Docker engine for the compose test and scripts/images.sh: installs
# Debian's docker.io and docker-compose (Compose v1) when missing and starts
# dockerd when none answers; `stop` stops the dockerd this script started
# (and nothing else).
#
#   scripts/docker-env.sh start    # prints "started" or "running"
#   scripts/docker-env.sh stop     # stops the dockerd `start` started, if any
#
# Needs root. State (pid file, dockerd's log) in $SLIM_DOCKER_STATE
# (default ~/.cache/slim-docker). No registry is needed: the images are
# built from this repository (scripts/images.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="${SLIM_DOCKER_STATE:-$HOME/.cache/slim-docker}"
PIDFILE="$STATE/dockerd.pid"
mkdir -p "$STATE"

case "${1:-}" in
start)
    ./scripts/install-deps.sh docker.io docker-compose
    if docker info >/dev/null 2>&1; then
        echo running
        exit 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "docker-env: no Docker engine answers and only root can start one" >&2
        exit 1
    fi
    # setsid: dockerd outlives this script, in its own session (a Ctrl-C
    # of the test does not reach it; `stop` does).
    setsid dockerd >"$STATE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 120); do
        if docker info >/dev/null 2>&1; then
            echo started
            exit 0
        fi
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            rm -f "$PIDFILE"
            echo "docker-env: dockerd exited; its log ($STATE/dockerd.log):" >&2
            tail -n 20 "$STATE/dockerd.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "docker-env: dockerd did not answer within 60 s; its log ($STATE/dockerd.log):" >&2
    tail -n 20 "$STATE/dockerd.log" >&2
    exit 1
    ;;
stop)
    [ -f "$PIDFILE" ] || exit 0
    pid="$(cat "$PIDFILE")"
    rm -f "$PIDFILE"
    # Only the process we started, and only if it still is dockerd.
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
        kill -TERM "$pid"
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || exit 0
            sleep 0.5
        done
        echo "docker-env: dockerd ($pid) did not stop within 30 s" >&2
        exit 1
    fi
    ;;
*)
    sed -n '2,12p' "$0" >&2
    exit 2
    ;;
esac
