#!/usr/bin/env bash
# Builds the images of deploy/docker/Dockerfile WITHOUT a registry: the
# binaries are built (or reused) on this machine, deploy/docker/rootfs.sh
# assembles the images' file trees from them, and docker builds the
# Dockerfile's final stages (all FROM scratch) on top of that tree.
#
#   scripts/images.sh             # debug binaries, stripped (what CI built already)
#   scripts/images.sh --release   # release binaries (what users ship)
#   scripts/images.sh --bin-dir DIR   # binaries already built in DIR (no cargo;
#                                     # tests/tests/compose_up.rs)
#
# Tags: slim:dev (runtime), slim-dev:dev (dev tools, demo agents),
# slim-prometheus:dev. Starts dockerd if needed (scripts/docker-env.sh; it
# keeps running: `scripts/docker-env.sh stop`). The Python agents need the
# slim_agents extension built (scripts/python-env.sh; run here if missing).
# Dangling images of earlier builds are removed, so disk use stays bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/slim-target}"
PROFILE=debug
BIN_DIR=
while [ $# -gt 0 ]; do
    case "$1" in
        --release) PROFILE=release ;;
        --bin-dir) BIN_DIR="$2"; shift ;;
        *) sed -n '2,17p' "$0" >&2; exit 2 ;;
    esac
    shift
done
./scripts/install-deps.sh python3 python3-venv python3-pip nftables prometheus binutils
./scripts/docker-env.sh start >/dev/null

t0=$SECONDS
BUILD=1
if [ -n "$BIN_DIR" ]; then
    echo "== binaries: $BIN_DIR"
    BUILD=0
elif [ "$PROFILE" = release ]; then
    echo "== binaries (release)"
    BIN_DIR="$CARGO_TARGET_DIR/release"
    cargo build --release --locked -q -p slim-node -p slim-controller -p slim-ctl \
        -p slim-devspire -p slim-demo --bins
else
    echo "== binaries (debug)"
    BIN_DIR="$CARGO_TARGET_DIR/debug"
    cargo build --locked -q -p slim-node -p slim-controller -p slim-ctl \
        -p slim-devspire -p slim-demo --bins
fi
if ! ls python/slim_agents/_native*.so >/dev/null 2>&1 && [ "$BUILD" = 1 ]; then
    echo "== the Python extension (scripts/python-env.sh)"
    ./scripts/python-env.sh >/dev/null
fi

STAGE="${SLIM_IMAGES_STAGE:-$HOME/.cache/slim-images}"
echo "== file trees ($STAGE)"
deploy/docker/rootfs.sh "$BIN_DIR" python/slim_agents "$STAGE/tree"
# The Dockerfile's final stages, with the tree as their `rootfs` stage.
{
    echo "FROM scratch AS rootfs"
    echo "COPY . /out/"
    sed -n '/^# ---- final stages/,$p' deploy/docker/Dockerfile
} >"$STAGE/Dockerfile"

echo "== images"
for target in runtime:slim:dev dev:slim-dev:dev prometheus:slim-prometheus:dev; do
    stage="${target%%:*}" tag="${target#*:}"
    # The classic builder: BuildKit would resolve the Dockerfile frontend
    # through a registry. Its output only when it fails.
    if ! out="$(DOCKER_BUILDKIT=0 docker build -q --target "$stage" -t "$tag" \
        -f "$STAGE/Dockerfile" "$STAGE/tree" 2>&1)"; then
        echo "$out" >&2
        echo "images.sh: docker build --target $stage failed" >&2
        exit 1
    fi
done
# The trees are in the images now; the images stay (tagged) for the next run.
rm -rf "$STAGE/tree"
docker image prune -f >/dev/null
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^slim(-dev|-prometheus)?:dev ' || true
echo "== images built in $((SECONDS - t0)) s"
