"""The fast parts of the SD image recipe (image-build/, systemd/network/, the image's own units).

The full build (`make image`, many minutes under emulation) and its boot check under qemu stay out of
`make test`; here every piece runs with the tool that reads it on the box: genimage lays out a real
(sparse) card image, nft checks the firewall, networkd's own key table checks the network files,
systemd-analyze verifies the units, RAUC bundles and extracts with a key made here, and the first-boot,
network and slot scripts run against temporary directories standing in for the partitions. Every check
comes with a negative control that the same check must reject.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import load_network
from appliance.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "image-build"
SYSTEMD = REPO / "systemd"
NFTABLES = SYSTEMD / "network/nftables.conf"
NETGEN = IMAGE / "bin/hes-netgen"
MIB = 1024 * 1024
ALIGN = 4 * MIB
IMAGE_UNITS = ("hes-growdata.service", "hes-firstboot.service", "hes-netgen.service", "hes-mark-good.service")


def tool(name: str, package: str) -> str:
    """The path of a command, or skip the test with the Debian package that provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path


def run(
    *command: str | Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def disk_signature() -> str:
    """The MBR disk signature of genimage.cfg: every PARTUUID on the card starts with it."""
    found = re.search(r"disk-signature = 0x([0-9a-f]{8})", (IMAGE / "genimage.cfg").read_text())
    assert found
    return found.group(1)


# --- genimage: the partitions ------------------------------------------------------------------------


def misalignments(table: dict) -> list[str]:
    """Partitions of an `sfdisk --json` table that do not start and end on a 4 MiB boundary."""
    sector = table["partitiontable"].get("sectorsize", 512)
    problems = []
    for part in table["partitiontable"]["partitions"]:
        start, size = part["start"] * sector, part["size"] * sector
        if start % ALIGN or size % ALIGN:
            problems.append(f"{part['node']}: start {start / MIB} MiB, size {size / MIB} MiB")
    return problems


def make_card(tmp_path: Path, config: str) -> dict:
    """genimage with `config` over a small root tree; the card's partition table as sfdisk reads it."""
    tool("genimage", "genimage")
    tool("mkfs.vfat", "dosfstools")
    tool("mcopy", "mtools")
    tool("mke2fs", "e2fsprogs")
    sfdisk = tool("sfdisk", "fdisk")
    root = tmp_path / "root"
    (root / "boot/firmware/a").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text("os_prefix=a/\n")
    (root / "data").mkdir()
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("hes\n")
    cfg = tmp_path / "genimage.cfg"
    cfg.write_text(config)
    for name in ("input", "out"):
        (tmp_path / name).mkdir()
    made = run(
        "genimage", "--config", cfg, "--rootpath", root, "--tmppath", tmp_path / "tmp",
        "--inputpath", tmp_path / "input", "--outputpath", tmp_path / "out", timeout=120,
        env={"PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"},  # mke2fs and mkdosfs, as a user too
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    dump = run(sfdisk, "--json", tmp_path / "out/hes-sdcard.img")
    assert dump.returncode == 0, dump.stderr
    return json.loads(dump.stdout)


def test_genimage_lays_out_four_aligned_partitions(tmp_path: Path) -> None:
    table = make_card(tmp_path, (IMAGE / "genimage.cfg").read_text())
    assert table["partitiontable"]["label"] == "dos"
    assert table["partitiontable"]["id"] == f"0x{disk_signature()}"
    parts = table["partitiontable"]["partitions"]
    assert [p["type"] for p in parts] == ["c", "83", "83", "83"]
    assert parts[0].get("bootable") is True
    assert misalignments(table) == []
    # Root A and root B are the same size: either can hold any update.
    assert parts[1]["size"] == parts[2]["size"]
    # The data partition is last: hes-growdata extends it to the end of the card.
    assert parts[3]["start"] == max(p["start"] for p in parts)


def test_alignment_check_rejects_a_misaligned_layout(tmp_path: Path) -> None:
    config = (IMAGE / "genimage.cfg").read_text()
    skewed = config.replace("align = 4M", "align = 1M").replace(
        "size = 256M\n\tmountpoint", "size = 250M\n\tmountpoint"
    )
    assert skewed.count("1M") == 1 and "250M" in skewed, "the breakage no longer applies to genimage.cfg"
    table = make_card(tmp_path, skewed)
    assert misalignments(table), "a root partition starting at 251 MiB must be reported"


def test_partuuids_agree_across_the_recipe() -> None:
    """The kernel command line, fstab and RAUC's slots name the partitions genimage writes."""
    signature = disk_signature()
    slot_boot = (IMAGE / "bin/hes-slot-boot").read_text()
    assert f"DISK_SIGNATURE={signature}" in slot_boot
    fstab = (IMAGE / "hooks/customize.sh").read_text()
    assert f"PARTUUID={signature}-01  /boot/firmware" in fstab
    assert f"PARTUUID={signature}-04  /data" in fstab
    system_conf = (IMAGE / "rauc/system.conf").read_text()
    assert re.findall(r"device=/dev/disk/by-partuuid/(\w+-\d+)", system_conf) == [
        f"{signature}-02",
        f"{signature}-03",
    ]


def test_customize_installs_only_files_that_exist() -> None:
    """Every source path the image hook installs is in the checkout (a renamed unit breaks the build)."""
    text = (IMAGE / "hooks/customize.sh").read_text()
    sources = re.findall(r'put \d+ "\$(SYSTEMD|HERE)/([^"]+)"', text)
    units = re.search(r"for unit in ([^;]+);", text)
    scripts = re.search(r"for script in ([^;]+);", text)
    assert sources and units and scripts
    paths = [(SYSTEMD if base == "SYSTEMD" else IMAGE) / rel for base, rel in sources if "$" not in rel]
    paths += [SYSTEMD / unit for unit in units.group(1).split()]
    paths += [IMAGE / "bin" / script for script in scripts.group(1).split()]
    assert [p for p in paths if not p.is_file()] == []
    assert set(IMAGE_UNITS) <= set(units.group(1).split())


# --- the network: nftables and systemd-networkd ------------------------------------------------------


def netgen(tmp_path: Path, config: str) -> tuple[subprocess.CompletedProcess, dict[str, str], str]:
    """Run hes-netgen over a box config; its networkd files and its nft commands."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    box = tmp_path / "hes.toml"
    box.write_text(config)
    result = run(
        sys.executable,
        NETGEN,
        "--config",
        box,
        "--network-dir",
        tmp_path / "net",
        "--nft-file",
        tmp_path / "ports.nft",
    )
    files = {p.name: p.read_text() for p in sorted((tmp_path / "net").glob("*"))}
    return result, files, (tmp_path / "ports.nft").read_text()


def nft_check(tmp_path: Path, *texts: str) -> subprocess.CompletedProcess:
    ruleset = tmp_path / "ruleset.nft"
    ruleset.write_text("\n".join(texts))
    return run(tool("nft", "nftables"), "-c", "-f", ruleset)


def test_nftables_policy_checks_and_denies_by_default(tmp_path: Path) -> None:
    text = NFTABLES.read_text()
    result = nft_check(tmp_path, text)
    if "Operation not permitted" in result.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert result.returncode == 0, result.stderr
    input_chain = text[text.index("chain input") : text.index("chain forward")]
    assert "policy drop;" in input_chain
    assert re.search(r"chain forward \{\s*type filter hook forward priority filter; policy drop;", text)
    # Ports are opened by interface group through the two sets only; the WAN set holds the listener's port.
    assert re.findall(r"tcp dport (\S+) accept", input_chain) == ["@wan_tcp", "@lan_tcp"]
    assert re.search(r"set wan_tcp \{[^}]*elements = \{ 4059 \}", text)
    broken = nft_check(tmp_path, text.replace("policy drop;", "policy dorp;", 1))
    assert broken.returncode != 0


def test_netgen_renders_a_vlan_and_opens_only_configured_ports(tmp_path: Path) -> None:
    config = """
[network]
lan_vlan_id = 42
lan_address = "10.20.1.15/24"
lan_gateway = "10.20.1.1"
lan_dns = ["10.20.0.53"]
lan_tcp_ports = [22]

[listener]
enabled = true
port = 4060
"""
    result, files, ports = netgen(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert sorted(files) == ["20-hes-lan-port.network", "21-hes-lan.netdev", "22-hes-lan.network"]
    assert "VLAN=hes-lan" in files["20-hes-lan-port.network"]
    assert "Group=" not in files["20-hes-lan-port.network"]  # untagged frames reach no open port
    assert re.search(r"Kind=vlan\n\n\[VLAN\]\nId=42\n", files["21-hes-lan.netdev"])
    lan = files["22-hes-lan.network"]
    for line in ("Group=1", "Address=10.20.1.15/24", "DNS=10.20.0.53", "Gateway=10.20.1.1"):
        assert line in lan.splitlines(), line
    assert "add element inet hes wan_tcp { 4060 }" in ports
    assert "add element inet hes lan_tcp { 22 }" in ports
    # The commands apply to the policy they belong to.
    checked = nft_check(tmp_path, NFTABLES.read_text(), ports)
    if "Operation not permitted" not in checked.stderr:
        assert checked.returncode == 0, checked.stderr


def test_netgen_defaults_and_a_bad_network_section(tmp_path: Path) -> None:
    """Default: DHCP on the untagged port, the listener (disabled) closed. A bad value: one line naming
    the key, and the template's network, so the box stays reachable."""
    result, files, ports = netgen(tmp_path / "default", "")
    assert result.returncode == 0, result.stderr
    assert list(files) == ["20-hes-lan-port.network"]
    assert "Name=eth0" in files["20-hes-lan-port.network"] and "DHCP=ipv4" in files["20-hes-lan-port.network"]
    assert "add element" not in ports
    result, files, ports = netgen(tmp_path / "bad", "[network]\nlan_vlan_id = 5000\n")
    assert result.returncode == 0
    assert result.stderr.count("\n") == 1 and "network.lan_vlan_id" in result.stderr, result.stderr
    assert list(files) == ["20-hes-lan-port.network"]


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('lan_address = "10.20.1.15"', "network.lan_address"),
        ('lan_gateway = "router"', "network.lan_gateway"),
        ("lan_tcp_ports = [0]", "network.lan_tcp_ports"),
        ('lan_tcp_ports = ["22"]', "network.lan_tcp_ports"),
        ('lan_interface = "eth0; rm"', "network.lan_interface"),
    ],
)
def test_network_section_rejects_impossible_values(tmp_path: Path, section: str, key: str) -> None:
    box = tmp_path / "hes.toml"
    box.write_text(f"[network]\n{section}\n")
    with pytest.raises(ConfigError) as caught:
        load_network(box)
    assert caught.value.key == key
    assert caught.value.path == str(box)


def networkd_problems(text: str) -> list[str]:
    """Keys systemd-networkd does not know: its parser's tables ("VLAN.Id", ...) are in its binary."""
    binary = next(
        (
            p
            for p in (Path("/lib/systemd/systemd-networkd"), Path("/usr/lib/systemd/systemd-networkd"))
            if p.exists()
        ),
        None,
    )
    if binary is None:
        pytest.skip("systemd-networkd is not installed (Debian package systemd)")
    known = set(re.findall(rb"[A-Z][A-Za-z0-9]*\.[A-Z][A-Za-z0-9]+", binary.read_bytes()))
    problems, section = [], ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#"):
            key = f"{section}.{line.split('=', 1)[0]}"
            if key.encode() not in known:
                problems.append(key)
    return problems


def test_network_files_use_only_keys_networkd_knows(tmp_path: Path) -> None:
    wan = (SYSTEMD / "network/40-hes-wan.network").read_text()
    assert networkd_problems(wan) == []
    assert "Group=2" in wan.splitlines()  # the nftables policy's WAN group
    _, files, _ = netgen(
        tmp_path, '[network]\nlan_vlan_id = 7\nlan_address = "10.0.0.2/24"\nlan_gateway = "10.0.0.1"\n'
    )
    _, dhcp_files, _ = netgen(tmp_path / "dhcp", "")
    for name, text in [*files.items(), *dhcp_files.items()]:
        assert networkd_problems(text) == [], name
    assert networkd_problems(wan.replace("RouteMetric=", "RouteMetrik=")) == ["DHCPv4.RouteMetrik"]


# --- the image's own units -----------------------------------------------------------------------------


def units_root(tmp_path: Path) -> Path:
    """The image's units (and hes.service, which they order against) in a throwaway root, with stubs
    where their ExecStart= lines point."""
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for name in ("hes.service", *IMAGE_UNITS):
        shutil.copy(SYSTEMD / name, units)
    for text in (u.read_text() for u in units.iterdir()):
        for command in re.findall(r"^ExecStart(?:Post)?=(\S+)", text, re.MULTILINE):
            stub = root / command.lstrip("-@:+!/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\n")
            stub.chmod(0o755)
    return root


def test_image_units_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze", "systemd")
    root = units_root(tmp_path)
    result = run(analyze, "verify", "--recursive-errors=no", "--man=no", f"--root={root}", *IMAGE_UNITS)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    unit = root / "etc/systemd/system/hes-netgen.service"
    unit.write_text(unit.read_text().replace("Type=oneshot", "Type=oneshoot"))
    broken = run(
        analyze, "verify", "--recursive-errors=no", "--man=no", f"--root={root}", "hes-netgen.service"
    )
    assert broken.returncode != 0
    assert "oneshoot" in broken.stderr


def test_mark_good_waits_for_a_ready_daemon() -> None:
    """RAUC's slot is committed only after hes.service said READY=1 (Type=notify + After=)."""
    text = (SYSTEMD / "hes-mark-good.service").read_text()
    assert "Requires=hes.service" in text and "After=hes.service" in text
    assert "Type=notify" in (SYSTEMD / "hes.service").read_text()


# --- first boot ------------------------------------------------------------------------------------------


def firstboot(boot: Path, data: Path) -> subprocess.CompletedProcess:
    user = run("id", "-un").stdout.strip()
    group = run("id", "-gn").stdout.strip()
    return run("sh", IMAGE / "bin/hes-firstboot", boot, data, env={"HES_USER": user, "HES_GROUP": group})


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_firstboot_takes_a_provisioned_card(tmp_path: Path) -> None:
    tool("openssl", "openssl")
    boot, data = tmp_path / "boot", tmp_path / "data"
    (boot / "hes/tls").mkdir(parents=True)
    (boot / "hes/keys").mkdir()
    data.mkdir()
    (boot / "hes/hes.toml").write_text('[hes]\nid = "@HES_ID@"\n\n[mqtt]\nhost = "noc.example"\n')
    (boot / "hes/id").write_text("hes-substation-12\r\n")
    for name in ("ca.pem", "device.pem", "device.key"):
        (boot / "hes/tls" / name).write_text(f"{name}\n")
    (boot / "hes/keys/MTR-B03.toml").write_text('password = "s3cret"\n')
    result = firstboot(boot, data)
    assert result.returncode == 0, result.stderr
    etc = data / "etc/hes"
    assert (
        etc / "hes.toml"
    ).read_text() == '[hes]\nid = "hes-substation-12"\n\n[mqtt]\nhost = "noc.example"\n'
    assert (etc / "tls/device.key").read_text() == "device.key\n"
    assert (etc / "keys/MTR-B03.toml").read_text() == 'password = "s3cret"\n'
    assert (mode(etc), mode(etc / "hes.toml"), mode(etc / "tls/device.key")) == (0o750, 0o640, 0o640)
    assert mode(data / "etc") == 0o755  # the daemon's user reaches /data/etc/hes through it
    assert mode(etc / "keys/MTR-B03.toml") == 0o600
    # Secrets are gone from the card; nothing to sign, so no request was made.
    left = sorted(str(p.relative_to(boot)) for p in boot.rglob("*") if p.is_file())
    assert left == ["hes/hes.toml", "hes/id"]
    assert "s3cret" not in result.stdout + result.stderr
    # A second boot changes nothing, even with a new template on the card.
    (boot / "hes/hes.toml").write_text('[hes]\nid = "other"\n')
    assert firstboot(boot, data).returncode == 0
    assert 'id = "hes-substation-12"' in (etc / "hes.toml").read_text()


def test_firstboot_makes_its_own_key_and_takes_the_certificate_later(tmp_path: Path) -> None:
    openssl = tool("openssl", "openssl")
    boot, data = tmp_path / "boot", tmp_path / "data"
    boot.mkdir()
    data.mkdir()
    result = firstboot(boot, data)
    assert result.returncode == 0, result.stderr
    etc = data / "etc/hes"
    found = re.fullmatch(r'# .*\n\[hes\]\nid = "(hes-[0-9a-f]{8})"\n', (etc / "hes.toml").read_text())
    assert found, (etc / "hes.toml").read_text()
    key = run(openssl, "pkey", "-in", etc / "tls/device.key", "-noout", "-text")
    assert key.returncode == 0 and "prime256v1" in key.stdout
    csr = run(openssl, "req", "-in", boot / "hes/device.csr", "-noout", "-subject", "-verify")
    assert csr.returncode == 0, csr.stderr
    assert f"CN = {found.group(1)}" in csr.stdout
    # The NOC signs the request; the certificate comes back on the card and is taken at the next boot.
    (boot / "hes/tls").mkdir()
    (boot / "hes/tls/device.pem").write_text("signed\n")
    own_key = (etc / "tls/device.key").read_text()
    assert firstboot(boot, data).returncode == 0
    assert (etc / "tls/device.pem").read_text() == "signed\n"
    assert (etc / "tls/device.key").read_text() == own_key
    assert not (boot / "hes/device.csr").exists()


def test_firstboot_takes_the_console_accounts_off_the_card(tmp_path: Path) -> None:
    tool("openssl", "openssl")
    boot, data = tmp_path / "boot", tmp_path / "data"
    (boot / "hes").mkdir(parents=True)
    data.mkdir()
    (boot / "hes/console-users").write_text("tech technician scrypt$16384$8$1$c2FsdA==$a2V5\n")
    result = firstboot(boot, data)
    assert result.returncode == 0, result.stderr
    installed = data / "etc/hes/console-users"
    assert installed.read_text() == "tech technician scrypt$16384$8$1$c2FsdA==$a2V5\n"
    assert mode(installed) == 0o600 and installed.stat().st_uid == os.getuid()
    assert not (boot / "hes/console-users").exists()
    assert "scrypt" not in result.stdout + result.stderr
    # A later card's file replaces it (the daemon never overwrites accounts that exist).
    (boot / "hes/console-users").write_text("anna admin scrypt$16384$8$1$c2FsdA==$a2V5\n")
    assert firstboot(boot, data).returncode == 0
    assert installed.read_text().startswith("anna admin ")


def test_firstboot_refuses_a_bad_identity(tmp_path: Path) -> None:
    boot, data = tmp_path / "boot", tmp_path / "data"
    (boot / "hes").mkdir(parents=True)
    data.mkdir()
    (boot / "hes/id").write_text("hes/../../x\n")
    result = firstboot(boot, data)
    assert result.returncode != 0
    assert "bad identity" in result.stdout
    assert not (data / "etc/hes/hes.toml").exists()


# --- updates: RAUC bundles and the tryboot switch ----------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Development keys, a second (foreign) CA, and a small root image, made once for the module."""
    tool("rauc", "rauc")
    tool("mksquashfs", "squashfs-tools")
    mke2fs = tool("mke2fs", "e2fsprogs")
    base = tmp_path_factory.mktemp("rauc")
    for name in ("dev", "foreign"):
        made = run("sh", IMAGE / "rauc/dev-keys.sh", base / name)
        assert made.returncode == 0, made.stderr
    (base / "tree").mkdir()
    (base / "tree/payload").write_bytes(os.urandom(256 * 1024))  # incompressible: a real squashfs
    made = run(mke2fs, "-q", "-t", "ext4", "-d", base / "tree", base / "root.ext4", "8M")
    assert made.returncode == 0, made.stderr
    return {"base": base, "root": base / "root.ext4"}


def make_bundle(parts: dict[str, Path], keys: str, out: Path) -> subprocess.CompletedProcess:
    k = parts["base"] / keys
    return run(
        "sh", IMAGE / "rauc/make-bundle.sh", parts["root"], "2.0.1", k / "signing.pem", k / "signing.key", out
    )


def test_rauc_bundle_extracts_with_the_image_keyring(bundle_parts: dict[str, Path], tmp_path: Path) -> None:
    bundle = tmp_path / "update.raucb"
    made = make_bundle(bundle_parts, "dev", bundle)
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    extracted = run("rauc", "extract", f"--keyring={bundle_parts['base'] / 'dev/ca.pem'}", bundle, out)
    assert extracted.returncode == 0, extracted.stderr
    assert (out / "root.ext4").read_bytes() == bundle_parts["root"].read_bytes()
    manifest = (out / "manifest.raucm").read_text()
    compatible = re.search(r"^compatible=(.*)$", (IMAGE / "rauc/system.conf").read_text(), re.MULTILINE)
    assert compatible and f"compatible={compatible.group(1)}" in manifest
    assert "format=verity" in manifest and "hooks=post-install" in manifest


def test_rauc_refuses_a_corrupted_or_foreign_bundle(bundle_parts: dict[str, Path], tmp_path: Path) -> None:
    keyring = f"--keyring={bundle_parts['base'] / 'dev/ca.pem'}"
    bundle = tmp_path / "update.raucb"
    assert make_bundle(bundle_parts, "dev", bundle).returncode == 0
    corrupted = tmp_path / "corrupted.raucb"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one bit pattern inside the payload, far from the signature
    corrupted.write_bytes(bytes(data))
    refused = run("rauc", "extract", keyring, corrupted, tmp_path / "out1")
    assert refused.returncode != 0
    assert "corrupted" in refused.stderr
    foreign = tmp_path / "foreign.raucb"
    assert make_bundle(bundle_parts, "foreign", foreign).returncode == 0
    refused = run("rauc", "extract", keyring, foreign, tmp_path / "out2")
    assert refused.returncode != 0
    assert "signature" in refused.stderr.lower()


class Pi:
    """The boot partition, /proc/cmdline and the firmware's tryboot flag, as the backend reads them."""

    def __init__(self, tmp_path: Path) -> None:
        self.boot = tmp_path / "boot"
        self.boot.mkdir()
        shutil.copy(IMAGE / "boot/config.txt", self.boot)
        self.cmdline = tmp_path / "cmdline"
        self.flag = tmp_path / "tryboot"

    def boots(self, slot: str, *, trial: bool) -> None:
        self.cmdline.write_text(f"console=ttyS1,115200 root=PARTUUID=48455301-02 ro rauc.slot={slot}\n")
        self.flag.write_bytes(b"\x00\x00\x00\x01" if trial else b"\x00\x00\x00\x00")

    def rauc(self, *args: str) -> str:
        env = {
            "HES_BOOT_DIR": str(self.boot),
            "HES_CMDLINE": str(self.cmdline),
            "HES_TRYBOOT_FLAG": str(self.flag),
        }
        result = run("sh", IMAGE / "rauc/hes-tryboot-backend", *args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def prefix(self, name: str) -> str:
        found = re.search(r"^os_prefix=(.*)$", (self.boot / name).read_text(), re.MULTILINE)
        assert found
        return found.group(1)


def test_tryboot_commits_an_update_that_came_up(tmp_path: Path) -> None:
    pi = Pi(tmp_path)
    pi.boots("A", trial=False)
    assert pi.rauc("get-primary") == "A"
    pi.rauc("set-state", "B", "bad")  # what RAUC does before it writes slot B
    pi.rauc("set-primary", "B")  # ... and after
    assert (pi.prefix("config.txt"), pi.prefix("tryboot.txt")) == ("a/", "b/")
    assert pi.rauc("get-primary") == "B"
    assert pi.rauc("get-state", "B") == "good"
    pi.boots("B", trial=True)  # systemctl reboot "0 tryboot"
    pi.rauc("set-state", "B", "good")  # hes-mark-good, once hes.service is ready
    assert pi.prefix("config.txt") == "b/"
    assert pi.rauc("get-primary") == "B"
    # The next update goes back to A the same way.
    pi.rauc("set-primary", "A")
    assert (pi.prefix("config.txt"), pi.prefix("tryboot.txt")) == ("b/", "a/")


def test_tryboot_falls_back_when_the_update_never_came_up(tmp_path: Path) -> None:
    pi = Pi(tmp_path)
    pi.boots("A", trial=False)
    pi.rauc("set-primary", "B")
    # The trial boot of B never marks it good; the watchdog reboots into config.txt's slot, A.
    pi.boots("A", trial=False)
    pi.rauc("set-state", "A", "good")
    assert pi.prefix("config.txt") == "a/"
    assert pi.rauc("get-primary") == "A"
    assert pi.rauc("get-state", "B") == "bad"
    # A normal boot of B (not a trial) never commits it either.
    pi.rauc("set-primary", "B")
    pi.boots("B", trial=False)
    pi.rauc("set-state", "B", "good")
    assert pi.prefix("config.txt") == "a/"
    # A slot the image does not have is refused, and nothing is written.
    before = {p.name: p.read_bytes() for p in pi.boot.iterdir()}
    env = {"HES_BOOT_DIR": str(pi.boot), "HES_CMDLINE": str(pi.cmdline), "HES_TRYBOOT_FLAG": str(pi.flag)}
    refused = run("sh", IMAGE / "rauc/hes-tryboot-backend", "set-primary", "C", env=env)
    assert refused.returncode != 0 and "unknown slot" in refused.stderr
    assert {p.name: p.read_bytes() for p in pi.boot.iterdir()} == before


def test_slot_boot_puts_the_kernel_under_the_slots_prefix(tmp_path: Path) -> None:
    root, boot = tmp_path / "root", tmp_path / "boot"
    version = "6.1.0-99-arm64"
    (root / "boot").mkdir(parents=True)
    (root / f"boot/vmlinuz-{version}").write_text("kernel")
    (root / f"boot/initrd.img-{version}").write_text("initrd")
    dtbs = root / f"usr/lib/linux-image-{version}/broadcom"
    dtbs.mkdir(parents=True)
    (dtbs / "bcm2711-rpi-4-b.dtb").write_text("dtb")
    boot.mkdir()
    (boot / "b").mkdir()
    (boot / "b/vmlinuz").write_text("old kernel")
    result = run("sh", IMAGE / "bin/hes-slot-boot", root, boot, "B")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (boot / "b").iterdir()) == [
        "bcm2711-rpi-4-b.dtb",
        "cmdline.txt",
        "initrd.img",
        "vmlinuz",
    ]
    assert (boot / "b/vmlinuz").read_text() == "kernel"
    cmdline = (boot / "b/cmdline.txt").read_text().split()
    assert f"root=PARTUUID={disk_signature()}-03" in cmdline
    assert {"ro", "rauc.slot=B"} <= set(cmdline)
    assert run("sh", IMAGE / "bin/hes-slot-boot", root, boot, "C").returncode == 2
