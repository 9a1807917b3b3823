#!/usr/bin/env bash
# The API read and write paths, side by side on this machine, in one run:
#   - nginx serving the very JSON of `GET /v1/nodes/<uuid>` as a static file
#     (the physical limit of "answer an HTTP request with these bytes"),
#   - Ferric all-in-one (release build, SQLite, fake-hardware), and a second
#     one with its answer cache off (api.node_cache_bytes = 0),
#   - real Ironic 39 all-in-one (SQLite, noauth, rpc_transport=none), the
#     recipe of notes/test-peers.md §5, in its own venv under target/bench.
# It prints every measurement and the ratios docs/benchmarks.md reports.
# Loopback only; every server it starts is stopped on exit.
#
#   scripts/bench-api.sh                 everything (~3 min + Ironic's install once)
#   BENCH_SECS=5 scripts/bench-api.sh    shorter wrk runs (default 10 s each)
#   BENCH_IRONIC=0 scripts/bench-api.sh  without Ironic (nginx and Ferric only)
#   BENCH_NODES=1000                     nodes in each server for the list
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${BENCH_SECS:-10}
NODES=${BENCH_NODES:-1000}
WITH_IRONIC=${BENCH_IRONIC:-1}
VER="X-OpenStack-Ironic-API-Version: 1.115"
LAB=$(mktemp -d /tmp/ferric-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$LAB"
}
trap cleanup EXIT

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
scripts/deps.sh build
cargo build --release --quiet -p ferric-cli --bin ferric
FERRIC=target/release/ferric

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, seconds
  local end=$((SECONDS + $2))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; do
    [ $SECONDS -lt $end ] || { echo "bench: $1 did not answer 200 within $2 s" >&2; exit 1; }
    sleep 0.1
  done
}
# requests/s of one wrk run: url, connections, extra wrk args...
rps() {
  local url=$1 c=$2; shift 2
  wrk -t2 -c"$c" -d"${SECS}s" -H "$VER" "$@" "$url" | tee -a "$LAB/wrk.log" | awk '/Requests\/sec/ {print $2}'
}
ratio() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print(f'{a / b:.2f}' if b else 'n/a')" "$1" "$2"; }

# a wrk script that creates fake-hardware nodes with distinct names
cat > "$LAB/create.lua" <<'EOF'
local counter = 0
local threads = {}
function setup(thread) thread:set("id", #threads); table.insert(threads, thread) end
function request()
  counter = counter + 1
  local body = string.format('{"driver": "fake-hardware", "name": "bench-%d-%d-%d"}', id, counter, math.random(1e9))
  return wrk.format("POST", "/v1/nodes", {["Content-Type"] = "application/json", ["X-OpenStack-Ironic-API-Version"] = "1.115"}, body)
end
EOF
# creates $2 nodes at $1 with 4 parallel curl loops (setup, not measured)
populate() {
  python3 - "$1" "$2" <<'EOF'
import json, sys, threading, urllib.request
base, n = sys.argv[1], int(sys.argv[2]); idx = iter(range(n)); lock = threading.Lock(); bad = []
def w():
    while True:
        with lock: i = next(idx, None)
        if i is None: return
        req = urllib.request.Request(base + "/v1/nodes", method="POST",
            data=json.dumps({"driver": "fake-hardware", "name": f"pop-{i}"}).encode(),
            headers={"Content-Type": "application/json", "X-OpenStack-Ironic-API-Version": "1.115"})
        try: urllib.request.urlopen(req).read()
        except Exception as e: bad.append(e)
ts = [threading.Thread(target=w) for _ in range(4)]; [t.start() for t in ts]; [t.join() for t in ts]
if bad: sys.exit(f"populate: {len(bad)} creates failed, first: {bad[0]}")
EOF
}
first_uuid() { curl -s -H "$VER" "$1/v1/nodes?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["nodes"][0]["uuid"])'; }

# --- Ferric, and Ferric without its answer cache --------------------------
start_ferric() { # variable for its URL, name, extra env... (not in a subshell: PIDS must see it)
  local var=$1 name=$2 port; shift 2
  port=$(free_port)
  mkdir -p "$LAB/$name"
  env RUST_LOG=warn "$@" "$FERRIC" all-in-one --listen "127.0.0.1:$port" --data-dir "$LAB/$name" > "$LAB/$name.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/v1/nodes" 60
  populate "http://127.0.0.1:$port" "$NODES"
  printf -v "$var" '%s' "http://127.0.0.1:$port"
}
start_ferric FERRIC_URL ferric
FUUID=$(first_uuid "$FERRIC_URL")
start_ferric UNCACHED_URL uncached FERRIC_API__NODE_CACHE_BYTES=0
UUUID=$(first_uuid "$UNCACHED_URL")

# --- nginx with Ferric's own answer as a static file ----------------------
NP=$(free_port)
mkdir -p "$LAB/nginx/html/v1/nodes" "$LAB/nginx/tmp"
curl -s -H "$VER" "$FERRIC_URL/v1/nodes/$FUUID" > "$LAB/nginx/html/v1/nodes/$FUUID"
cat > "$LAB/nginx/nginx.conf" <<EOF
worker_processes 1;
error_log $LAB/nginx/error.log;
pid $LAB/nginx/nginx.pid;
daemon off;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $LAB/nginx/tmp; proxy_temp_path $LAB/nginx/tmp; fastcgi_temp_path $LAB/nginx/tmp;
  uwsgi_temp_path $LAB/nginx/tmp; scgi_temp_path $LAB/nginx/tmp;
  default_type application/json;
  server { listen 127.0.0.1:$NP; root $LAB/nginx/html; }
}
EOF
# nginx's worker runs as nobody when started by root: let it read the file
chmod 755 "$LAB" && chmod -R a+rX "$LAB/nginx"
nginx -c "$LAB/nginx/nginx.conf" -e "$LAB/nginx/error.log" &
PIDS+=($!)
wait_http "http://127.0.0.1:$NP/v1/nodes/$FUUID" 20

# --- Ironic 39 ---------------------------------------------------------------
if [ "$WITH_IRONIC" = 1 ]; then
  IV=target/bench/ironic-venv
  if [ ! -x "$IV/bin/ironic" ]; then
    echo "bench: installing ironic==39.0.0 into $IV (once)" >&2
    python3 -m venv "$IV"
    "$IV/bin/pip" install -q --disable-pip-version-check ironic==39.0.0
  fi
  IP=$(free_port)
  mkdir -p "$LAB/ironic/locks"
  cat > "$LAB/ironic/ironic.conf" <<EOF
[DEFAULT]
host = ironic-bench
auth_strategy = noauth
rpc_transport = none
debug = false
log_file = $LAB/ironic/ironic.log
enabled_hardware_types = fake-hardware
enabled_bios_interfaces = fake,no-bios
enabled_boot_interfaces = fake
enabled_console_interfaces = fake,no-console
enabled_deploy_interfaces = fake
enabled_firmware_interfaces = fake,no-firmware
enabled_inspect_interfaces = fake,no-inspect
enabled_management_interfaces = fake
enabled_network_interfaces = noop
enabled_power_interfaces = fake
enabled_raid_interfaces = fake,no-raid
enabled_rescue_interfaces = fake,no-rescue
enabled_storage_interfaces = noop
enabled_vendor_interfaces = fake,no-vendor
[api]
host_ip = 127.0.0.1
port = $IP
[database]
connection = sqlite:///$LAB/ironic/ironic.sqlite
[dhcp]
dhcp_provider = none
[conductor]
automated_clean = false
[oslo_concurrency]
lock_path = $LAB/ironic/locks
EOF
  "$IV/bin/ironic-dbsync" --config-file "$LAB/ironic/ironic.conf" create_schema > /dev/null 2>&1
  "$IV/bin/ironic" --config-file "$LAB/ironic/ironic.conf" > "$LAB/ironic/ironic.out" 2>&1 &
  PIDS+=($!)
  IRONIC_URL=http://127.0.0.1:$IP
  wait_http "$IRONIC_URL/v1/nodes" 120
  populate "$IRONIC_URL" "$NODES"
  IUUID=$(first_uuid "$IRONIC_URL")
fi

echo "bench: ${SECS}s per run, wrk -t2, $NODES nodes in each server, $(nproc) cores" >&2
nginx_get=$(rps "http://127.0.0.1:$NP/v1/nodes/$FUUID" 16)
ferric_get=$(rps "$FERRIC_URL/v1/nodes/$FUUID" 16)
ferric_list=$(rps "$FERRIC_URL/v1/nodes/detail?limit=1000" 4)
ferric_create=$(rps "$FERRIC_URL/v1/nodes" 8 -s "$LAB/create.lua")
uncached_get=$(rps "$UNCACHED_URL/v1/nodes/$UUUID" 16)
uncached_list=$(rps "$UNCACHED_URL/v1/nodes/detail?limit=1000" 4)
if [ "$WITH_IRONIC" = 1 ]; then
  ironic_get=$(rps "$IRONIC_URL/v1/nodes/$IUUID" 16)
  ironic_list=$(rps "$IRONIC_URL/v1/nodes/detail?limit=1000" 4)
  ironic_create=$(rps "$IRONIC_URL/v1/nodes" 8 -s "$LAB/create.lua")
fi

# every answer of every run must have been a success
if grep -q "Non-2xx" "$LAB/wrk.log"; then
  echo "bench: some answers were not 2xx:" >&2; grep -B8 "Non-2xx" "$LAB/wrk.log" >&2; exit 1
fi

printf '%-44s %12s\n' "measurement" "req/s"
printf '%-44s %12s\n' "nginx static file, GET node (-c16)" "$nginx_get"
printf '%-44s %12s\n' "Ferric GET /v1/nodes/<uuid> (-c16)" "$ferric_get"
printf '%-44s %12s\n' "Ferric GET nodes/detail?limit=1000 (-c4)" "$ferric_list"
printf '%-44s %12s\n' "Ferric POST /v1/nodes (-c8)" "$ferric_create"
printf '%-44s %12s\n' "Ferric, no answer cache, GET node (-c16)" "$uncached_get"
printf '%-44s %12s\n' "Ferric, no answer cache, GET detail (-c4)" "$uncached_list"
if [ "$WITH_IRONIC" = 1 ]; then
  printf '%-44s %12s\n' "Ironic 39 GET /v1/nodes/<uuid> (-c16)" "$ironic_get"
  printf '%-44s %12s\n' "Ironic 39 GET nodes/detail?limit=1000 (-c4)" "$ironic_list"
  printf '%-44s %12s\n' "Ironic 39 POST /v1/nodes (-c8)" "$ironic_create"
fi
echo
printf '%-44s %8s\n' "ratio" "x"
printf '%-44s %8s\n' "GET node: Ferric / nginx static" "$(ratio "$ferric_get" "$nginx_get")"
printf '%-44s %8s\n' "GET node, no cache: Ferric / nginx static" "$(ratio "$uncached_get" "$nginx_get")"
if [ "$WITH_IRONIC" = 1 ]; then
  printf '%-44s %8s\n' "GET node: Ferric / Ironic 39" "$(ratio "$ferric_get" "$ironic_get")"
  printf '%-44s %8s\n' "GET node, no cache: Ferric / Ironic 39" "$(ratio "$uncached_get" "$ironic_get")"
  printf '%-44s %8s\n' "GET nodes/detail?limit=1000: Ferric / Ironic" "$(ratio "$ferric_list" "$ironic_list")"
  printf '%-44s %8s\n' "GET detail, no cache: Ferric / Ironic" "$(ratio "$uncached_list" "$ironic_list")"
  printf '%-44s %8s\n' "POST node: Ferric / Ironic 39" "$(ratio "$ferric_create" "$ironic_create")"
fi
