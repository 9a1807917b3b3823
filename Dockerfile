# syntax=docker/dockerfile:1
# Ferric's container image: ferric, ferric-api, ferric-conductor and
# ferricctl, plus what the conductor runs or reads at run time (the BIOS
# boot loaders a boot ISO carries, a GRUB EFI loader for UEFI ISOs, the
# PXE loader, qemu-img for the iSCSI deploy). Non-root (65532), and fine
# with a read-only root filesystem: everything written goes under
# /var/lib/ferric and /tmp, which the Helm chart mounts.
#
#   docker build -t ferric:0.1.0 .

FROM rust:1.94-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ferric-cli --bins \
 && mkdir -p /out \
 && cp target/release/ferric target/release/ferric-api target/release/ferric-conductor target/release/ferricctl /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates isolinux syslinux-common pxelinux grub-efi-amd64-bin grub-common \
      qemu-utils qemu-block-extra \
 && grub-mkimage -O x86_64-efi -p /EFI/BOOT -o /usr/lib/ferric-BOOTX64.EFI \
      iso9660 fat part_gpt part_msdos search search_fs_file linux normal configfile echo serial terminal \
 && apt-get purge -y grub-common && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o 65532 -g 65532 /var/lib/ferric
COPY --from=build /out/ /usr/local/bin/
ENV FERRIC_DEPLOY__UEFI_LOADER=/usr/lib/ferric-BOOTX64.EFI
USER 65532:65532
WORKDIR /var/lib/ferric
EXPOSE 6385 9090 8080
CMD ["ferric", "--help"]
