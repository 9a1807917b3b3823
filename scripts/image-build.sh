#!/usr/bin/env bash
# Build Ferric's container image here, without pulling a base image: an
# image FROM scratch whose root filesystem is assembled from this machine's
# Debian packages (the same bookworm files the Dockerfile's runtime stage
# installs) and the release binaries, with their shared libraries. Then
# check the image itself: export it, and run it the way the Helm chart does
# (user 65532, root filesystem read-only, only /var/lib/ferric and /tmp
# writable): the binaries start, qemu-img has its iSCSI driver, the boot
# loaders are where the configuration defaults say, and an all-in-one in
# the image serves the API to the real `baremetal` client.
#
#   scripts/image-build.sh              build target/image/ferric-<version>.oci.tar and check it
#
# Slow (a release build); not part of scripts/test.sh. Needs podman (Debian's
# package; installed if missing) for `podman build` — running containers is
# not needed (this machine's sandbox refuses crun's setrlimit), the check
# runs the exported root filesystem under chroot and a read-only bind mount.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v podman >/dev/null; then
  echo "image: installing podman" >&2
  sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive sudo_ apt-get install -y -qq --no-install-recommends podman fuse-overlayfs >/dev/null
fi

version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ferric-cli"))')
out=target/image
rootfs=$out/rootfs
rm -rf "$rootfs" && mkdir -p "$rootfs"

cargo build --release --locked -p ferric-cli --bins --quiet
bins="ferric ferric-api ferric-conductor ferricctl"

# a file and every shared library it loads, at their own paths
copy_with_libs() {
  local f
  for f in "$@"; do
    install -D -m 0755 "$f" "$rootfs$f"
    ldd "$f" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | while read -r lib; do
      [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
    done
  done
}

for b in $bins; do
  install -D -m 0755 "target/release/$b" "$rootfs/usr/local/bin/$b"
  ldd "target/release/$b" | awk '/=> \//{print $3} /^[ \t]*\/lib/{print $1}' | while read -r lib; do
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
done
# qemu-img (the iscsi deploy's writer) and its iSCSI block driver module
copy_with_libs "$(command -v qemu-img)" /usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so
# the boot loaders the ISO builder and the TFTP root read (configuration defaults)
for f in /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 /usr/lib/PXELINUX/pxelinux.0 \
         /etc/ssl/certs/ca-certificates.crt; do
  install -D -m 0644 "$f" "$rootfs$f"
done
grub-mkimage -O x86_64-efi -p /EFI/BOOT -o "$rootfs/usr/lib/ferric-BOOTX64.EFI" \
  iso9660 fat part_gpt part_msdos search search_fs_file linux normal configfile echo serial terminal
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/lib/ferric"
chmod 1777 "$rootfs/tmp"
chown 65532:65532 "$rootfs/var/lib/ferric"
printf 'root:x:0:0:root:/root:/sbin/nologin\nferric:x:65532:65532:ferric:/var/lib/ferric:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nferric:x:65532:\n' > "$rootfs/etc/group"
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
printf '127.0.0.1 localhost\n' > "$rootfs/etc/hosts"

cat > "$out/Containerfile" <<EOF
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin FERRIC_DEPLOY__UEFI_LOADER=/usr/lib/ferric-BOOTX64.EFI
USER 65532:65532
WORKDIR /var/lib/ferric
EXPOSE 6385 9090 8080
CMD ["ferric", "--help"]
EOF
tag=localhost/ferric:$version
podman build --quiet --network none -t "$tag" -f "$out/Containerfile" "$out" >/dev/null
rm -f "$out/ferric-$version.oci.tar"
podman save --quiet --format oci-archive -o "$out/ferric-$version.oci.tar" "$tag"
echo "image: $tag, $(du -h "$out/ferric-$version.oci.tar" | cut -f1) ($out/ferric-$version.oci.tar)"

# ---- check the image, not the directory it was built from ----------------
check=$(mktemp -d)
ctr=$(podman create "$tag")
cleanup() {
  if [ -n "${pid:-}" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  umount "$check/root/var/lib/ferric" "$check/root/tmp" "$check/root" 2>/dev/null \
    || umount -l "$check/root/var/lib/ferric" "$check/root/tmp" "$check/root" 2>/dev/null || true
  podman rm -f "$ctr" >/dev/null 2>&1 || true
  rm -rf "$check"
}
trap cleanup EXIT
mkdir -p "$check/root" "$check/data" "$check/tmp"
podman export "$ctr" | tar -x -C "$check/root"
user=$(podman image inspect "$tag" --format '{{.Config.User}}')
[ "$user" = 65532:65532 ] || { echo "image: runs as '$user', not 65532:65532" >&2; exit 1; }
# read-only root, writable data and tmp, like the chart's securityContext + volumes
mount --bind "$check/root" "$check/root" && mount -o remount,bind,ro "$check/root"
chown 65532:65532 "$check/data" "$check/tmp"
mount --bind "$check/data" "$check/root/var/lib/ferric"
mount --bind "$check/tmp" "$check/root/tmp"
# the image's own environment (PATH, FERRIC_DEPLOY__UEFI_LOADER), nothing of ours
mapfile -t image_env < <(podman image inspect "$tag" --format '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
chroot_bin=$(command -v chroot)
in_image() { env -i "${image_env[@]}" HOME=/var/lib/ferric "$chroot_bin" --userspec=65532:65532 "$check/root" "$@"; }

for b in $bins; do in_image "/usr/local/bin/$b" --version >/dev/null; done
echo "ok   the four binaries start as 65532 on a read-only root"
in_image /usr/bin/qemu-img --help | grep -q 'Supported formats:.* iscsi' \
  || { echo "image: qemu-img lacks its iscsi driver" >&2; exit 1; }
echo "ok   qemu-img with the iscsi block driver"
if in_image sh -c true 2>/dev/null; then echo "image: a shell is in the image (not expected)" >&2; exit 1; fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
in_image /usr/local/bin/ferric all-in-one --listen "127.0.0.1:$port" --data-dir /var/lib/ferric \
  > "$check/aio.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$check/aio.log"; echo "image: all-in-one exited" >&2; exit 1; }
  sleep 0.2
done
.venv/bin/baremetal --os-auth-type none --os-endpoint "http://127.0.0.1:$port" driver list -f value -c name \
  | grep -qx redfish || { cat "$check/aio.log"; echo "image: the API in the image does not list redfish" >&2; exit 1; }
if grep -q 'BIOS only' "$check/aio.log"; then echo "image: the UEFI loader was not found" >&2; exit 1; fi
echo "ok   an all-in-one in the image serves the API to baremetal, with the image's UEFI loader"
echo "image: checked"
