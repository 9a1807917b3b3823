#!/usr/bin/env bash
# Loopback OpenStack Swift for tests: memcached + proxy + account/container/object
# servers from Debian's packages, one replica, storage in a plain directory.
#
#   swift-lab.sh setup   write configs under $SWIFT_LAB, build rings (idempotent)
#   swift-lab.sh start   start memcached and the four servers, wait until ready
#   swift-lab.sh stop    stop them by PID
#   swift-lab.sh status  show the PIDs that are alive
#   swift-lab.sh expire  one container-updater + object-expirer pass (removes
#                        expired objects from disk and from container listings)
#
# Needs: apt-get install -y --no-install-recommends swift swift-proxy \
#          swift-account swift-container swift-object swift-object-expirer memcached
# (scripts/deps.sh installs them). The Swift tests run it with free ports in
# SWIFT_*_PORT and a fresh SWIFT_LAB, and stop it when they end.
set -euo pipefail

SWIFT_LAB=${SWIFT_LAB:?set SWIFT_LAB to an empty directory, e.g. SWIFT_LAB=\$(mktemp -d)}
PROXY_PORT=${SWIFT_PROXY_PORT:-18080}
ACCOUNT_PORT=${SWIFT_ACCOUNT_PORT:-16012}
CONTAINER_PORT=${SWIFT_CONTAINER_PORT:-16011}
OBJECT_PORT=${SWIFT_OBJECT_PORT:-16010}
MEMCACHED_PORT=${SWIFT_MEMCACHED_PORT:-11311}

ETC=$SWIFT_LAB/etc
RUN=$SWIFT_LAB/run
LOG=$SWIFT_LAB/log
DEVICES=$SWIFT_LAB/srv/node

setup() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$DEVICES/d1" "$SWIFT_LAB/cache"

  # Debian's Swift 2.30 always reads /etc/swift/swift.conf (hash prefix and
  # suffix, storage policies); only the rings follow swift_dir. Swift 2.38
  # from PyPI reads swift.conf from swift_dir. Write the same file to both.
  mkdir -p /etc/swift
  cat > "$ETC/swift.conf" <<'EOF'
[swift-hash]
swift_hash_path_prefix = ferric-test-prefix
swift_hash_path_suffix = ferric-test-suffix

[storage-policy:0]
name = gold
default = yes

[swift-constraints]
EOF
  cp "$ETC/swift.conf" /etc/swift/swift.conf

  cat > "$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PROXY_PORT
workers = 0
user = root
swift_dir = $ETC
log_name = proxy-server
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats tempurl tempauth copy dlo slo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = false

[filter:tempauth]
use = egg:swift#tempauth
# user_<account>_<user> = <key> [groups...]; .admin = account owner
user_test_tester = testing .admin
user_admin_admin = admin .admin .reseller_admin

[filter:tempurl]
use = egg:swift#tempurl
# Debian 2.30 default when unset: sha1 sha256 sha512 (sha1 logged as deprecated)
allowed_digests = sha1 sha256 sha512

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:dlo]
use = egg:swift#dlo

[filter:slo]
use = egg:swift#slo
EOF

  local kind port
  for kind in account container object; do
    case $kind in
      account) port=$ACCOUNT_PORT ;;
      container) port=$CONTAINER_PORT ;;
      object) port=$OBJECT_PORT ;;
    esac
    cat > "$ETC/$kind-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $port
workers = 0
user = root
swift_dir = $ETC
devices = $DEVICES
mount_check = false
disable_fallocate = true
recon_cache_path = $SWIFT_LAB/cache
log_name = $kind-server
log_level = INFO

[pipeline:main]
pipeline = $kind-server

[app:$kind-server]
use = egg:swift#$kind

[$kind-replicator]

[$kind-auditor]
EOF
    # updaters exist for containers (push stats to accounts) and objects
    # (replay async container updates)
    [ "$kind" = account ] || printf '\n[%s-updater]\n' "$kind" >> "$ETC/$kind-server.conf"
  done

  # object-expirer.conf doubles as the expirer's internal-client config
  # (a file whose name contains "expirer" is read that way). Only needed when
  # a test wants expired objects gone from disk and from container listings:
  # GET/HEAD already answer 404 after X-Delete-At without it.
  cat > "$ETC/object-expirer.conf" <<EOF
[DEFAULT]
user = root
swift_dir = $ETC
recon_cache_path = $SWIFT_LAB/cache
log_name = object-expirer

[object-expirer]
interval = 1

[pipeline:main]
pipeline = catch_errors proxy-logging cache proxy-server

[app:proxy-server]
use = egg:swift#proxy

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MEMCACHED_PORT

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:catch_errors]
use = egg:swift#catch_errors
EOF

  # one-replica rings: part_power 8, replicas 1, min_part_hours 1
  (
    cd "$ETC"
    rm -f ./*.builder ./*.ring.gz
    rm -rf backups
    swift-ring-builder account.builder create 8 1 1
    swift-ring-builder account.builder add --region 1 --zone 1 --ip 127.0.0.1 --port "$ACCOUNT_PORT" --device d1 --weight 100
    swift-ring-builder container.builder create 8 1 1
    swift-ring-builder container.builder add --region 1 --zone 1 --ip 127.0.0.1 --port "$CONTAINER_PORT" --device d1 --weight 100
    swift-ring-builder object.builder create 8 1 1
    swift-ring-builder object.builder add --region 1 --zone 1 --ip 127.0.0.1 --port "$OBJECT_PORT" --device d1 --weight 100
    for r in account container object; do
      swift-ring-builder $r.builder rebalance
    done
  )
}

wait_port() {  # wait_port NAME URL — until an HTTP answer comes
  local name=$1 url=$2 i
  for i in $(seq 1 300); do
    if curl -s -o /dev/null --max-time 1 "$url"; then return 0; fi
    sleep 0.1
  done
  echo "$name did not come up; see $LOG/$name.log" >&2
  return 1
}

start() {
  [ -f "$ETC/object.ring.gz" ] || setup
  memcached -l 127.0.0.1 -p "$MEMCACHED_PORT" -U 0 -m 16 -u root > "$LOG/memcached.log" 2>&1 &
  echo $! > "$RUN/memcached.pid"
  local s
  for s in account container object proxy; do
    "swift-$s-server" "$ETC/$s-server.conf" -v > "$LOG/$s.log" 2>&1 &
    echo $! > "$RUN/$s.pid"
  done
  wait_port account "http://127.0.0.1:$ACCOUNT_PORT/healthcheck"
  wait_port container "http://127.0.0.1:$CONTAINER_PORT/healthcheck"
  wait_port object "http://127.0.0.1:$OBJECT_PORT/healthcheck"
  local i
  for i in $(seq 1 300); do
    if [ "$(curl -s --max-time 1 "http://127.0.0.1:$PROXY_PORT/healthcheck")" = OK ]; then
      echo "swift ready at http://127.0.0.1:$PROXY_PORT"; return 0
    fi
    sleep 0.1
  done
  echo "proxy did not come up; see $LOG/proxy.log" >&2
  return 1
}

alive() {  # a zombie waiting to be reaped counts as gone
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

stop() {
  local s pid
  for s in proxy object container account memcached; do
    [ -f "$RUN/$s.pid" ] || continue
    pid=$(cat "$RUN/$s.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    rm -f "$RUN/$s.pid"
  done
}

expire() {  # one pass: container stats -> accounts, then delete expired objects
  swift-container-updater "$ETC/container-server.conf" --once -v >> "$LOG/container-updater.log" 2>&1
  swift-object-expirer "$ETC/object-expirer.conf" --once -v >> "$LOG/object-expirer.log" 2>&1
}

status() {
  local s
  for s in memcached account container object proxy; do
    if [ -f "$RUN/$s.pid" ] && alive "$(cat "$RUN/$s.pid")"; then
      echo "$s: running (pid $(cat "$RUN/$s.pid"))"
    else
      echo "$s: stopped"
    fi
  done
}

case ${1:-} in
  setup) setup ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  expire) expire ;;
  *) echo "usage: $0 setup|start|stop|status|expire" >&2; exit 2 ;;
esac
