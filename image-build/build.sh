#!/bin/bash
# Builds the appliance's SD image from Debian's archive alone: `make image` runs this. See docs/image.md.
#
#   1. the wheelhouse: the appliance's wheel and its arm64 dependencies (pip, on the build host)
#   2. the base root file system: mmdebstrap --arch=arm64 under qemu-user binfmt (slow, ~15-30 min:
#      the initramfs is built under emulation), cached in $OUT/base.tar until packages.txt changes
#   3. the appliance on top of it (hooks/customize.sh): venv, units, config, boot partition layout
#   4. genimage: the partitions, 4 MiB aligned, into $OUT/hes-sdcard.img
#
# Needs root (chroot, device nodes) and the Debian packages mmdebstrap, qemu-user-static,
# binfmt-support, genimage, dosfstools, mtools, e2fsprogs. Environment: OUT (default build/image in
# the checkout), MIRROR (default http://deb.debian.org/debian), RAUC_KEYRING (the CA that update
# bundles must chain to; default: the development CA of image-build/rauc/dev-keys.sh).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
OUT=${OUT:-$REPO/build/image}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
STEPS=4

step() { printf '\n==> [%s/%s] %s (%s)\n' "$1" "$STEPS" "$2" "$(date +%H:%M:%S)"; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap, chroot and genimage need it)"
for cmd in mmdebstrap genimage mkfs.vfat mcopy mke2fs; do
	command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || die "$cmd is missing (make image installs it)"
done
"$HERE/bin/hes-binfmt" || die "cannot run arm64 binaries: qemu-user binfmt is not available"
mkdir -p "$OUT"
START=$(date +%s)
if [ -z "${RAUC_KEYRING:-}" ]; then
	"$HERE/rauc/dev-keys.sh" "$OUT/rauc-dev-keys"
	KEYRING="$OUT/rauc-dev-keys/ca.pem"
	echo "RAUC keyring: the DEVELOPMENT CA ($KEYRING); set RAUC_KEYRING for a production image"
else
	KEYRING=$RAUC_KEYRING
fi

step 1 "wheelhouse: the appliance and its arm64 wheels"
# Every requirement resolved and built here first; pure-Python wheels serve arm64 as they are, the
# others are fetched again as the same version's manylinux aarch64 wheel.
rm -rf "$OUT/wheels" "$OUT/host-wheels"
"${PY:-python3}" -m pip wheel -q -w "$OUT/host-wheels" "$REPO"
mkdir -p "$OUT/wheels"
for wheel in "$OUT"/host-wheels/*.whl; do
	case $wheel in
	*-none-any.whl) cp "$wheel" "$OUT/wheels/" ;;
	*)
		IFS=- read -r name version _ <<<"${wheel##*/}"
		"${PY:-python3}" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
			--python-version 3.11 --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
			-d "$OUT/wheels" "$name==$version"
		;;
	esac
done
rm -rf "$OUT/host-wheels"
# The `pi` extra (the GPIO of the LED panel): arm64 wheels only, lgpio is a C extension for the Pi.
read -ra pi_extra < <("${PY:-python3}" -c 'import configparser, sys
c = configparser.ConfigParser(); c.read(sys.argv[1]); print(*c["options.extras_require"]["pi"].split())' \
	"$REPO/setup.cfg")
"${PY:-python3}" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
	--platform manylinux_2_34_aarch64 --platform manylinux2014_aarch64 -d "$OUT/wheels" "${pi_extra[@]}"
ls "$OUT/wheels"

step 2 "base root file system: Debian $SUITE arm64 (cached in $OUT/base.tar)"
if [ ! -s "$OUT/base.tar" ] || [ "$HERE/packages.txt" -nt "$OUT/base.tar" ]; then
	packages=$(grep -v '^#' "$HERE/packages.txt" | paste -sd, -)
	# raspi-firmware's kernel hook copies the kernel into /boot/firmware, which must exist.
	mmdebstrap --arch=arm64 --variant=minbase --components="main non-free-firmware" \
		--include="$packages" \
		--setup-hook='mkdir -p "$1/boot/firmware"' \
		--customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*_Packages' \
		"$SUITE" "$OUT/base.partial.tar" "$MIRROR"
	mv "$OUT/base.partial.tar" "$OUT/base.tar"
else
	echo "up to date"
fi

step 3 "the appliance on the base (hooks/customize.sh)"
rm -rf "$OUT/root"
mkdir -p "$OUT/root"
tar -C "$OUT/root" --numeric-owner -xpf "$OUT/base.tar"
"$HERE/hooks/customize.sh" "$OUT/root" "$OUT/wheels" "$KEYRING"

step 4 "genimage: partitions, 4 MiB aligned"
rm -rf "$OUT/genimage-tmp" "$OUT/images"
mkdir -p "$OUT/images" "$OUT/input"
genimage --config "$HERE/genimage.cfg" --rootpath "$OUT/root" --tmppath "$OUT/genimage-tmp" \
	--inputpath "$OUT/input" --outputpath "$OUT/images"
mv "$OUT/images/hes-sdcard.img" "$OUT/hes-sdcard.img"
mv "$OUT/images/root.ext4" "$OUT/root.ext4"
rm -rf "$OUT/genimage-tmp" "$OUT/images"
sfdisk --dump "$OUT/hes-sdcard.img"
printf '\nimage: %s (%s), built in %s s\n' "$OUT/hes-sdcard.img" \
	"$(du -h --apparent-size "$OUT/hes-sdcard.img" | cut -f1)" "$(($(date +%s) - START))"
