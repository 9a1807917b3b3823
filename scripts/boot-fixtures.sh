#!/usr/bin/env bash
# Build what the QEMU boot tests boot, into target/boot-fixtures (or $1):
#   vmlinuz      Debian's stock kernel, extracted from the linux-image .deb
#                (downloaded from the package registry, not installed)
#   initrd       a busybox initramfs whose /init prints FERRIC-RAMDISK-UP and
#                the kernel command line on the console, then powers off
#   BOOTX64.EFI  GRUB for the boot ISO's EFI partition, prefix /EFI/BOOT
# Idempotent: files that exist are kept. Needs the packages scripts/deps.sh
# installs (busybox-static, cpio, grub-efi-amd64-bin, grub-common).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/boot-fixtures}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# tests run in parallel and each may call this: one builder at a time
exec 9>"$OUT/.lock"
flock 9

if [ ! -s "$OUT/vmlinuz" ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$pkg" ] || { echo "boot-fixtures: no linux-image package known to apt (run apt-get update)" >&2; exit 1; }
  tmp=$(mktemp -d)
  chmod 1777 "$tmp"   # apt-get download drops to the _apt user
  (cd "$tmp" && apt-get download -q "$pkg" >/dev/null && dpkg-deb --fsys-tarfile ./*.deb | tar -x --wildcards './boot/vmlinuz-*')
  cp "$tmp"/boot/vmlinuz-* "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
  rm -rf "$tmp"
fi

if [ ! -s "$OUT/initrd" ]; then
  root=$(mktemp -d)
  mkdir -p "$root"/{bin,proc,dev}
  cp /bin/busybox "$root/bin/busybox"
  cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "FERRIC-RAMDISK-UP cmdline: $(/bin/busybox cat /proc/cmdline)"
/bin/busybox poweroff -f
EOF
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT/initrd.tmp"
  mv "$OUT/initrd.tmp" "$OUT/initrd"
  rm -rf "$root"
fi

if [ ! -s "$OUT/BOOTX64.EFI" ]; then
  grub-mkimage -O x86_64-efi -p /EFI/BOOT -o "$OUT/BOOTX64.EFI.tmp" \
    iso9660 fat part_gpt part_msdos search search_fs_file linux normal configfile echo serial terminal
  mv "$OUT/BOOTX64.EFI.tmp" "$OUT/BOOTX64.EFI"
fi
ls -l "$OUT"
