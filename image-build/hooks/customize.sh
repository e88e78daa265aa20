#!/bin/bash
# Puts the appliance on a Debian arm64 root file system: customize.sh ROOT WHEELS KEYRING
# (build.sh step 3; runs on the build host, arm64 programs in ROOT through qemu-user binfmt).
# Everything the box runs comes from this checkout: the wheel, systemd/, image-build/.
set -euo pipefail
ROOT=$1 WHEELS=$2 KEYRING=$3
HERE=$(cd "$(dirname "$0")/.." && pwd)
SYSTEMD=$(dirname "$HERE")/systemd
BOOT="$ROOT/boot/firmware"

say() { echo "  - $*"; }
put() { install -D -m "$1" "$2" "$ROOT$3"; }  # put MODE SOURCE PATH-ON-THE-IMAGE

# The programs run in the root (pip, sysusers, passwd) want /dev and /proc.
mount --bind /dev "$ROOT/dev"
mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" "$ROOT/dev"' EXIT

say "the appliance in /opt/hes/venv (its wheel and the arm64 wheels of its dependencies)"
rm -rf "$ROOT/tmp/wheels"
mkdir -p "$ROOT/tmp/wheels"
cp "$WHEELS"/*.whl "$ROOT/tmp/wheels/"
chroot "$ROOT" python3 -m venv /opt/hes/venv
# Byte-compiled here: the root is read-only on the box, where nothing could write a .pyc.
chroot "$ROOT" /opt/hes/venv/bin/pip install -q --no-index --find-links /tmp/wheels 'hes-appliance[pi]'
rm -rf "$ROOT/tmp/wheels"
chroot "$ROOT" /opt/hes/venv/bin/hes --version
# The LED panel's driver loads (a Pi 4's revision stands in for the board; lgpio leaves its
# notification pipe in the working directory, and opens /dev/gpiochip* only when a line is set up).
chroot "$ROOT" /bin/sh -c 'cd /tmp && RPI_LGPIO_REVISION=d03114 /opt/hes/venv/bin/python -c "import RPi.GPIO"'
rm -f "$ROOT"/tmp/.lgd-nfy*

say "units and system configuration (systemd/)"
for unit in hes.service hes-growdata.service hes-firstboot.service hes-netgen.service hes-mark-good.service; do
	put 644 "$SYSTEMD/$unit" "/etc/systemd/system/$unit"
done
put 644 "$SYSTEMD/sysusers.d/hes.conf" /usr/lib/sysusers.d/hes.conf
put 644 "$SYSTEMD/tmpfiles.d/hes.conf" /usr/lib/tmpfiles.d/hes.conf
put 644 "$SYSTEMD/udev/99-hes-gpio.rules" /etc/udev/rules.d/99-hes-gpio.rules
put 644 "$SYSTEMD/serial-getty@.service.d/hes-console.conf" /etc/systemd/system/serial-getty@.service.d/hes-console.conf
put 644 "$SYSTEMD/journald.conf.d/hes.conf" /etc/systemd/journald.conf.d/hes.conf
put 644 "$SYSTEMD/chrony/hes.conf" /etc/chrony/chrony.conf
put 644 "$SYSTEMD/default/gpsd" /etc/default/gpsd
put 644 "$SYSTEMD/network/40-hes-wan.network" /etc/systemd/network/40-hes-wan.network
put 755 "$SYSTEMD/network/nftables.conf" /etc/nftables.conf
for script in hes-firstboot hes-growdata hes-netgen hes-slot-boot; do
	put 755 "$HERE/bin/$script" "/usr/lib/hes/$script"
done
chroot "$ROOT" systemd-sysusers
# The technician's account on the serial console: its login shell is `hes console`, which asks for
# the console's own credentials (roles, lockout, audit). No OS password: the serial port needs the
# cabinet key, and the account can do nothing but the console.
chroot "$ROOT" useradd --no-create-home --home-dir / --groups hes --shell /opt/hes/venv/bin/hes-console tech
chroot "$ROOT" passwd --delete tech >/dev/null
grep -qx /opt/hes/venv/bin/hes-console "$ROOT/etc/shells" || echo /opt/hes/venv/bin/hes-console >>"$ROOT/etc/shells"
systemctl --root="$ROOT" enable hes.service hes-growdata.service hes-firstboot.service hes-netgen.service \
	hes-mark-good.service systemd-networkd.service nftables.service gpsd.service chrony.service
# Nothing may change the read-only root behind RAUC's back.
systemctl --root="$ROOT" mask apt-daily.timer apt-daily-upgrade.timer

say "updates: RAUC with the tryboot backend"
put 644 "$HERE/rauc/system.conf" /etc/rauc/system.conf
put 644 "$KEYRING" /etc/rauc/keyring.pem
put 755 "$HERE/rauc/hes-tryboot-backend" /usr/lib/hes/hes-tryboot-backend

say "read-only root, writable /data"
mkdir -p "$ROOT/data"
# The box's config and keys live on /data; /etc/hes points there (hes.service reads /etc/hes/hes.toml).
rm -rf "$ROOT/etc/hes"
ln -s /data/etc/hes "$ROOT/etc/hes"
cat >"$ROOT/etc/fstab" <<'FSTAB'
# The root (slot A or B) is mounted read-only by the kernel (cmdline.txt: ro) and stays so.
# The boot partition is read-only too; the first-boot and update scripts open it while they write.
PARTUUID=48455301-01  /boot/firmware  vfat   ro,noatime,fmask=0077,dmask=0077      0  2
PARTUUID=48455301-04  /data           ext4   rw,noatime,nodev,nosuid               0  2
tmpfs                 /tmp            tmpfs  mode=1777,nosuid,nodev,size=64M       0  0
tmpfs                 /var/tmp        tmpfs  mode=1777,nosuid,nodev,size=16M       0  0
tmpfs                 /var/log        tmpfs  mode=0755,nosuid,nodev,size=16M       0  0
# Run-time state of systemd and chrony (timers, random seed, drift): lost at reboot by design.
tmpfs                 /var/lib/systemd  tmpfs  mode=0755,nosuid,nodev,size=4M      0  0
tmpfs                 /var/lib/chrony   tmpfs  mode=0755,nosuid,nodev,size=1M      0  0
FSTAB
# An empty machine id: systemd makes a new one in RAM at every boot (nothing on the box depends on it).
: >"$ROOT/etc/machine-id"
echo hes >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\thes\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
chroot "$ROOT" passwd --lock root >/dev/null

say "boot partition: Raspberry Pi firmware, slot A's kernel in a/"
# raspi-firmware's hooks left the firmware and a kernel of their own at the top: keep the firmware only.
find "$BOOT" -mindepth 1 -maxdepth 1 ! -name 'bootcode.bin' ! -name 'start*.elf' ! -name 'fixup*.dat' \
	! -name 'LICENCE*' -exec rm -rf {} +
install -m 644 "$HERE/boot/config.txt" "$BOOT/config.txt"
"$HERE/bin/hes-slot-boot" "$ROOT" "$BOOT" A
mkdir -p "$BOOT/hes"
install -m 644 "$HERE/boot/README.txt" "$BOOT/hes/README.txt"

say "clean-up"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/debconf/*-old
du -shx "$ROOT" "$BOOT"
