#!/usr/bin/env bash
# Assembles the file trees of the images in deploy/docker/Dockerfile, from
# binaries that are already built: each program plus the shared libraries
# `ldd` lists for it, and nothing else (no shell, no package manager, no
# HTTP client in the runtime image). The Dockerfile's `rootfs` stage runs it
# on release binaries; scripts/images.sh runs it on the host's binaries.
#
#   deploy/docker/rootfs.sh BIN_DIR PY_PACKAGE_DIR OUT
#
# BIN_DIR: slim-node slim-controller slimctl slim-devspire slim-demo-agent
# inject-event. PY_PACKAGE_DIR: the slim_agents package with its compiled
# extension (python/slim_agents after scripts/python-env.sh, or an unpacked
# wheel). Needs: python3.11 with pip, nft and prometheus installed on this
# machine (Debian's packages), strip (binutils), and PyPI or a pip cache
# holding python/sdk-requirements.txt (PIP_CACHE_DIR, default ~/.cache/pip).
# Writes OUT/runtime (slim-node, slim-controller, slimctl), OUT/owned (the
# directories the non-root user writes to), OUT/dev (the development and
# demo tools: slim-devspire, the demo agents, Python, nft, bash and the few
# utilities the identity service's script uses) and OUT/prometheus.
# Binaries are copied with `strip --strip-debug` (function names stay, for
# backtraces); release binaries have no debug info to begin with.
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,21p' "$0" >&2; exit 2; }
BIN="$1" PYPKG="$2" OUT="$3"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$OUT"
mkdir -p "$OUT"/{runtime,owned,dev,prometheus,prometheus-owned}

# copy_file SRC TREE: SRC at the same path in TREE (symlinks resolved).
copy_file() {
    mkdir -p "$2$(dirname "$1")"
    cp -L "$1" "$2$1"
}
# libs FILE TREE: the shared libraries FILE loads, and the dynamic loader.
libs() {
    ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}' |
        while read -r lib; do
            # A wheel's bundled library (pkg.libs/) is in the tree already.
            case "$lib" in "$2"/*) continue ;; esac
            [ -e "$2$lib" ] || copy_file "$lib" "$2"
        done
}
# program SRC TREE [DEST]: a binary, stripped, with its libraries.
program() {
    local dest="${3:-/usr/local/bin/$(basename "$1")}"
    mkdir -p "$2$(dirname "$dest")"
    cp -L "$1" "$2$dest"
    strip --strip-debug "$2$dest"
    libs "$1" "$2"
}

# --- runtime: what a user ships -----------------------------------------------
R="$OUT/runtime"
for b in slim-node slim-controller slimctl; do
    [ -x "$BIN/$b" ] || { echo "rootfs.sh: $BIN/$b is missing (build it first)" >&2; exit 1; }
    program "$BIN/$b" "$R"
done
mkdir -p "$R/etc" "$R/tmp" "$R/etc/slim" "$R/etc/ssl/certs"
chmod 1777 "$R/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nslim:x:10001:10001:slim:/var/lib/slim:/sbin/nologin\n' >"$R/etc/passwd"
printf 'root:x:0:\nslim:x:10001:\n' >"$R/etc/group"
# Names through /etc/hosts, then DNS (compose and Kubernetes provide both).
printf 'hosts: files dns\n' >"$R/etc/nsswitch.conf"
# Trust roots for anything that is not SPIFFE (SPIFFE bundles come from the
# Workload API or the identity files).
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"
fi
# Writable by uid 10001, so that empty named volumes mounted there start
# writable for it: the controller's audit store, the Workload API sockets
# and the development CA (compose). The Dockerfile copies these with
# --chown (COPY does not keep owners).
mkdir -p "$OUT/owned/var/lib/slim/controller-data" "$OUT/owned/var/lib/slim/dev-ca" \
    "$OUT/owned/run/spiffe"

# --- dev: the development Workload API server and the fleet demo ---------------
D="$OUT/dev"
for b in slim-devspire slim-demo-agent inject-event; do
    [ -x "$BIN/$b" ] || { echo "rootfs.sh: $BIN/$b is missing (build it first)" >&2; exit 1; }
    program "$BIN/$b" "$D"
done
# The identity service's script (compose: spiffe-dev) and the firewall of
# cluster A's "VPN" (compose: cluster-a-firewall).
for t in bash rm seq sleep touch nft; do
    p="$(command -v "$t")" || { echo "rootfs.sh: $t is not installed" >&2; exit 1; }
    program "$p" "$D" "/usr/bin/$t"
done
# Python 3.11: the interpreter, its standard library without what the agents
# cannot use (tests, IDLE, Tk, the embedding kit), and slim_agents.
PY=/usr/bin/python3.11
[ -x "$PY" ] || { echo "rootfs.sh: $PY is missing (apt-get install python3)" >&2; exit 1; }
program "$PY" "$D" /usr/bin/python3.11
ln -s python3.11 "$D/usr/bin/python3"
mkdir -p "$D/usr/lib"
tar -C /usr/lib -c --exclude='python3.11/test' --exclude='python3.11/idlelib' \
    --exclude='python3.11/tkinter' --exclude='python3.11/turtledemo' \
    --exclude='python3.11/ensurepip' --exclude='python3.11/config-3.11-*' \
    --exclude='python3.11/lib2to3' --exclude='python3.11/site-packages' \
    --exclude='python3.11/dist-packages' --exclude='__pycache__' python3.11 | tar -C "$D/usr/lib" -x
for so in "$D"/usr/lib/python3.11/lib-dynload/*.so; do
    libs "$so" "$D"
done
SITE="$D/usr/local/lib/python3.11/dist-packages"
mkdir -p "$SITE"
ls "$PYPKG"/_native*.so >/dev/null 2>&1 ||
    { echo "rootfs.sh: no compiled extension in $PYPKG (run scripts/python-env.sh)" >&2; exit 1; }
cp -rL "$PYPKG" "$SITE/slim_agents"
rm -rf "$SITE/slim_agents/__pycache__" "$SITE/slim_agents/.gitignore"
for so in "$SITE"/slim_agents/*.so; do
    strip --strip-debug "$so"
    libs "$so" "$D"
done
# The agent-protocol SDKs (mcp, a2a-sdk: pins in python/sdk-requirements.txt)
# with their dependencies, for the demo's MCP tool server and A2A agent and
# their callers. Installed by the interpreter the image gets (so the wheels
# match its ABI), from the persistent pip cache after the first build; no
# bytecode, console scripts or test suites (the image runs the agents only).
"$PY" -m pip --version >/dev/null 2>&1 ||
    { echo "rootfs.sh: no pip for $PY (scripts/install-deps.sh python3-pip)" >&2; exit 1; }
PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PY" -m pip install -q --no-compile --no-warn-script-location --root-user-action=ignore \
    --target "$SITE" -r "$ROOT/python/sdk-requirements.txt" ||
    { echo "rootfs.sh: pip could not install python/sdk-requirements.txt into the dev image" >&2; exit 1; }
rm -rf "$SITE/bin"
find "$SITE" -depth -type d \( -name __pycache__ -o -name tests \) -exec rm -rf {} +
find "$SITE" -name '*.so' -type f | while read -r so; do
    strip --strip-debug "$so"
    libs "$so" "$D"
done
mkdir -p "$D/opt/slim/agents"
cp "$ROOT"/demo/agents/*.py "$D/opt/slim/agents/"
# Libraries the runtime image already has are not copied twice.
(cd "$R" && find . -type f -path './lib*' -o -type f -path './usr/lib*') | while read -r f; do
    rm -f "$D/$f"
done

# --- prometheus: Debian's binary, for the compose fleet -------------------------
P="$OUT/prometheus"
PROM="$(command -v prometheus)" || { echo "rootfs.sh: prometheus is not installed" >&2; exit 1; }
program "$PROM" "$P" /bin/prometheus
mkdir -p "$P/etc/prometheus" "$P/tmp" "$P/etc" "$OUT/prometheus-owned/prometheus"
chmod 1777 "$P/tmp"
cp "$R/etc/passwd" "$R/etc/group" "$R/etc/nsswitch.conf" "$P/etc/"
du -sh "$OUT"/* >&2
