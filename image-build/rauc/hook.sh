#!/bin/sh
# The bundle's install hook (RAUC runs it on the box): after the new root is written to the other
# slot, that slot's kernel goes onto the boot partition (b/ or a/), with the new root's own script.
set -eu
case $1 in
slot-post-install)
	[ "$RAUC_SLOT_CLASS" = rootfs ] || exit 0
	boot=/boot/firmware
	mount -o remount,rw "$boot"
	trap 'mount -o remount,ro "$boot"' EXIT
	"$RAUC_SLOT_MOUNT_POINT/usr/lib/hes/hes-slot-boot" "$RAUC_SLOT_MOUNT_POINT" "$boot" "$RAUC_SLOT_BOOTNAME"
	;;
esac
