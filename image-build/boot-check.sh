#!/bin/bash
# Boots the SD image under qemu-system-aarch64 -M virt with its own (Debian) kernel and checks it from
# the serial log: boot-check.sh DIR (DIR holds build.sh's hes-sdcard.img; `make image-check`).
#
#   boot 1  a copy of the card, 1 GiB larger and provisioned like a technician would (hes/ on the boot
#           partition: config, test CA, device key and certificate); a simulated Modbus meter on the
#           host behind the VM's USB serial adapter (/dev/ttyUSB0). Checks: hes.service READY (active),
#           root read-only, /data writable and grown, identity and keys taken from the card. Then the
#           store's reading count is printed every second while the daemon collects, and the VM is
#           killed (SIGKILL: a power cut) a few seconds into it.
#   boot 2  the same card with hes.service masked: PRAGMA integrity_check must say ok, and the store
#           must hold at least every reading that was seen committed before the cut. Then poweroff.
# The checks run from the kernel command line (systemd.run=) with a script put on the card's boot
# partition; the image itself carries no test code. Needs root, qemu-system-arm, mtools, socat, openssl
# and the checkout's venv with the sim extra (PY, default .venv/bin/python).
set -euo pipefail
DIR=$(cd "$1" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PY=${PY:-$REPO/.venv/bin/python}
WORK=$(mktemp -d /tmp/hes-boot-check.XXXXXX)
READY_TIMEOUT=${READY_TIMEOUT:-900}
QEMU_PID=""
SIM_PIDS=()
cleanup() {
	[ -z "$QEMU_PID" ] || kill -9 "$QEMU_PID" 2>/dev/null || true
	for pid in "${SIM_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	[ -n "${KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "boot-check: FAIL: $*" >&2; exit 1; }
say() { printf '==> %s (%s)\n' "$*" "$(date +%H:%M:%S)"; }

say "a provisioned copy of the card in $WORK"
cp --sparse=always "$DIR/hes-sdcard.img" "$WORK/card.img"
truncate -s +1G "$WORK/card.img"
boot_offset=$(($(sfdisk --json "$WORK/card.img" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][0]["start"])') * 512))
FAT="$WORK/card.img@@$boot_offset"
mkdir -p "$WORK/hes/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=boot-check CA" \
	-keyout "$WORK/ca.key" -out "$WORK/hes/tls/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=hes-bootcheck" \
	-keyout "$WORK/hes/tls/device.key" -out "$WORK/device.csr" 2>/dev/null
openssl x509 -req -in "$WORK/device.csr" -CA "$WORK/hes/tls/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
	-days 30 -out "$WORK/hes/tls/device.pem" 2>/dev/null
echo hes-bootcheck >"$WORK/hes/id"
cat >"$WORK/hes/hes.toml" <<'TOML'
[hes]
id = "@HES_ID@"

[mqtt]
# Nobody listens: the outbox keeps everything, which is what a power cut test wants.
host = "192.0.2.1"

[buses.A]
device = "/dev/ttyUSB0"

[buses.B]
enabled = false

[[meters]]
id = "QEMU-A1"
bus = "A"
address = 1
model = "sdm630"
poll_interval_s = 1
TOML
cat >"$WORK/hes-check.sh" <<'CHECK'
#!/bin/sh
# Run by systemd.run= from the boot-check's kernel command line (never part of the image).
# Verdicts go through the kernel log to the serial console (printk.devkmsg=on): writing to the
# console's tty directly would be cut off when the serial getty hangs it up.
say() { echo "HESCHECK $*" >/dev/kmsg; }
journal() { journalctl -u hes.service -b --no-pager -n "$1" | while read -r line; do echo "HESLOG $line" >/dev/kmsg; done; }
if [ "$1" = collect ]; then
	# systemd.run= replaces the default target: start the box's own target as a normal boot would.
	systemctl start --no-block multi-user.target
	for i in $(seq 1 900); do
		state=$(systemctl show -p ActiveState --value hes.service)
		[ "$state" = active ] && break
		[ "$state" = failed ] && break
		# Every 30 s, what the daemon is doing (its journal stays in RAM otherwise).
		[ $((i % 30)) != 0 ] || journal 3
		sleep 1
	done
	say "hes=$(systemctl show -p ActiveState --value hes.service)"
	# hes-mark-good.service follows READY=1: RAUC's view of the slots once it ran.
	systemctl start hes-mark-good.service
	say "mark-good=$(systemctl show -p Result --value hes-mark-good.service)"
	say "rauc-booted=$(rauc status --output-format=shell 2>&1 | sed -n "s/^RAUC_SYSTEM_BOOTED_BOOTNAME='\(.*\)'$/\1/p")"
	journalctl -u hes-mark-good.service -b --no-pager -n 4 | while read -r line; do echo "HESLOG $line" >/dev/kmsg; done
	say "root=$(findmnt -no OPTIONS / | cut -d, -f1)"
	touch /hes-rw-probe 2>/dev/null && say "root-writable=yes" || say "root-writable=no"
	touch /data/hes-rw-probe && rm /data/hes-rw-probe && say "data-writable=yes" || say "data-writable=no"
	say "data-size-mib=$(df -m --output=size /data | tail -n 1 | tr -d ' ')"
	say "id=$(sed -n 's/^id = "\(.*\)"$/\1/p' /etc/hes/hes.toml)"
	say "boot-secrets-left=$(find /boot/firmware/hes -name '*.key' | wc -l)"
	say "failed-units=$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
	journal 8
	say "checked"
	while true; do
		say "count=$(sqlite3 -readonly /data/hes/hes.db 'SELECT count(*) FROM readings' 2>&1)"
		sleep 1
	done
else
	say "integrity=$(sqlite3 /data/hes/hes.db 'PRAGMA integrity_check' 2>&1 | tr '\n' ' ')"
	say "after-count=$(sqlite3 /data/hes/hes.db 'SELECT count(*) FROM readings' 2>&1)"
	say "done"
fi
CHECK
mcopy -o -s -i "$FAT" "$WORK/hes" ::/
mcopy -o -i "$FAT" "$WORK/hes-check.sh" ::/hes-check.sh
mcopy -o -i "$FAT" ::/a/vmlinuz "$WORK/vmlinuz"
mcopy -o -i "$FAT" ::/a/initrd.img "$WORK/initrd.img"

say "a simulated Modbus meter on the host (socat pty pair, pymodbus)"
socat pty,raw,echo=0,link="$WORK/ttyMeter" pty,raw,echo=0,link="$WORK/ttyVM" &
SIM_PIDS+=($!)
for _ in $(seq 50); do [ -e "$WORK/ttyMeter" ] && [ -e "$WORK/ttyVM" ] && break; sleep 0.1; done
(cd "$REPO" && exec "$PY" -m appliance.sim.modbus_meter --port "$WORK/ttyMeter" --meter 1:sdm630) &
SIM_PIDS+=($!)

# boot PHASE LOG: starts the VM in the background (QEMU_PID).
boot() {
	local cmdline
	cmdline="console=ttyAMA0 root=PARTUUID=48455301-02 rootfstype=ext4 ro rootwait rauc.slot=A printk.devkmsg=on"
	# On qemu's virt board ttyAMA0 is the console, not the GPS HAT's port: gpsd stays off it.
	cmdline+=" systemd.mask=gpsd.service systemd.mask=gpsd.socket"
	cmdline+=" systemd.run=\"/bin/sh /boot/firmware/hes-check.sh $1\" systemd.run_success_action=poweroff"
	[ "$1" = collect ] || cmdline+=" systemd.mask=hes.service"
	qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -display none -no-reboot -nic none \
		-kernel "$WORK/vmlinuz" -initrd "$WORK/initrd.img" -append "$cmdline" \
		-drive "file=$WORK/card.img,format=raw,if=virtio" \
		-device qemu-xhci -device usb-serial,chardev=meter -chardev "serial,id=meter,path=$WORK/ttyVM" \
		-serial "file:$2" &
	QEMU_PID=$!
}
# wait_for LOG PATTERN SECONDS
wait_for() {
	local deadline=$((SECONDS + $3))
	until grep -qa "$2" "$1" 2>/dev/null; do
		[ $SECONDS -lt $deadline ] || fail "no '$2' in $1 within $3 s (KEEP=1 keeps $WORK)"
		kill -0 "$QEMU_PID" 2>/dev/null || fail "the VM stopped before '$2' (see $1)"
		sleep 1
	done
}
value() { grep -a "HESCHECK $2=" "$1" | tail -n 1 | sed "s/.*HESCHECK $2=//" | tr -d '\r'; }

say "boot 1: first boot, provisioning, hes.service, then collection"
START=$SECONDS
boot collect "$WORK/boot1.log"
wait_for "$WORK/boot1.log" "HESCHECK checked" "$READY_TIMEOUT"
say "booted to hes.service in $((SECONDS - START)) s"
grep -a "HESCHECK\|HESLOG" "$WORK/boot1.log" | grep -v count= || true
[ "$(value "$WORK/boot1.log" hes)" = active ] || fail "hes.service did not reach READY"
[ "$(value "$WORK/boot1.log" mark-good)" = success ] || fail "RAUC could not mark the booted slot good"
[ "$(value "$WORK/boot1.log" rauc-booted)" = A ] || fail "RAUC does not see slot A booted"
[ "$(value "$WORK/boot1.log" root)" = ro ] || fail "the root is not mounted read-only"
[ "$(value "$WORK/boot1.log" root-writable)" = no ] || fail "the root is writable"
[ "$(value "$WORK/boot1.log" data-writable)" = yes ] || fail "/data is not writable"
[ "$(value "$WORK/boot1.log" data-size-mib)" -gt 1000 ] || fail "/data did not grow to the card"
[ "$(value "$WORK/boot1.log" id)" = hes-bootcheck ] || fail "the identity was not taken from the card"
[ "$(value "$WORK/boot1.log" boot-secrets-left)" = 0 ] || fail "the device key is still on the boot partition"

# Collect until the store has readings and keeps growing, then cut the power at a random moment.
wait_for "$WORK/boot1.log" "HESCHECK count=[1-9]" 300
sleep $((3 + RANDOM % 6))
kill -9 "$QEMU_PID"
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=""
committed=$(grep -a "HESCHECK count=" "$WORK/boot1.log" | tail -n 1 | sed 's/.*count=//' | tr -d '\r')
first=$(grep -a "HESCHECK count=[1-9]" "$WORK/boot1.log" | head -n 1 | sed 's/.*count=//' | tr -d '\r')
[ "$committed" -gt "$first" ] || fail "the store did not grow before the cut: not a cut during collection"
say "power cut: $committed readings were committed and seen before it"

say "boot 2: the store after the power cut (hes.service masked)"
boot verify "$WORK/boot2.log"
wait_for "$WORK/boot2.log" "HESCHECK done" "$READY_TIMEOUT"
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=""
grep -a "HESCHECK" "$WORK/boot2.log"
[ "$(value "$WORK/boot2.log" integrity | tr -d ' ')" = ok ] || fail "PRAGMA integrity_check after the cut"
after=$(value "$WORK/boot2.log" after-count)
[ "$after" -ge "$committed" ] || fail "readings lost: $committed committed before the cut, $after after"
say "PASS: READY, read-only root, writable /data, $committed committed readings all there after the cut ($after)"
