#!/bin/sh
# Makes a signed RAUC update bundle from a root file system image:
#   make-bundle.sh ROOT_EXT4 VERSION CERT KEY OUT.raucb
# ROOT_EXT4 is build.sh's root.ext4; CERT and KEY sign it (dev-keys.sh makes development ones; the
# production key never leaves its HSM: docs/image.md, "Keys"). KEY may be a PKCS#11 URI.
set -eu
[ $# = 5 ] || { echo "usage: $0 ROOT_EXT4 VERSION CERT KEY OUT.raucb" >&2; exit 2; }
ROOT_EXT4=$1 VERSION=$2 CERT=$3 KEY=$4 OUT=$5
HERE=$(cd "$(dirname "$0")" && pwd)
COMPATIBLE=$(sed -n 's/^compatible=//p' "$HERE/system.conf")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/bundle"
cp "$ROOT_EXT4" "$work/bundle/root.ext4"
cp "$HERE/hook.sh" "$work/bundle/hook.sh"
cat >"$work/bundle/manifest.raucm" <<MANIFEST
[update]
compatible=$COMPATIBLE
version=$VERSION

[bundle]
format=verity

[hooks]
filename=hook.sh

[image.rootfs]
filename=root.ext4
hooks=post-install
MANIFEST
rm -f "$OUT"
rauc bundle --cert="$CERT" --key="$KEY" "$work/bundle" "$OUT"
