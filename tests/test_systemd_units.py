"""The systemd side of the appliance (systemd/): the files the SD image installs, checked with the tools
that read them on the box.

- hes.service: `systemd-analyze verify` in a throwaway root (the unit unchanged, a stub at its ExecStart
  path), `systemd-analyze security --offline=yes` (exposure <= 2.0), agreement with the CLI and the config
  template, and the daemon itself running inside the unit's seccomp sandbox against simulated meters.
- sysusers.d and tmpfiles.d applied for real to a throwaway root, chrony's config through `chronyd -p`,
  journald's keys against journald's own table, the getty drop-in verified over Debian's serial-getty@.
- The checks come with negative controls: deliberately broken copies the same check must reject.

When this file is run as a script (`python tests/test_systemd_units.py sandbox UNIT -- COMMAND...`) it
runs COMMAND under the seccomp filters systemd builds for UNIT: that is how the daemon test uses it.
"""

from __future__ import annotations

import configparser
import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "hes.service"
MAX_EXPOSURE = 2.0


# --- helpers ---------------------------------------------------------------------------------------


def tool(name: str, package: str) -> str:
    """The path of a command, or skip the test with the Debian package that provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package {package})")
    return path


def run(*command: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=timeout, check=False
    )


def unit_values(text: str, key: str) -> list[str]:
    """Every value of `key` in a unit file, in order (units repeat keys; configparser cannot)."""
    pattern = re.compile(rf"^{re.escape(key)}=(.*)$", re.MULTILINE)
    return [value.strip() for value in pattern.findall(text)]


def exec_path(text: str) -> str:
    """The binary of the unit's (single) ExecStart=."""
    (command,) = unit_values(text, "ExecStart")
    return command.lstrip("-@:+!").split()[0]


def unit_root(tmp_path: Path, text: str, *, stub: bool = True) -> Path:
    """A throwaway root holding the unit as /etc/systemd/system/hes.service and, unless `stub` is
    false, an executable stub where ExecStart= points (verify resolves both inside --root)."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/hes.service").write_text(text)
    if stub:
        binary = root / exec_path(text).lstrip("/")
        binary.parent.mkdir(parents=True)
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    return root


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    analyze = tool("systemd-analyze", "systemd")
    # --recursive-errors=no: only the unit itself counts (the default returns 0 even for broken units);
    # --man=no: the check must not depend on man-db being installed.
    return run(analyze, "verify", "--recursive-errors=no", "--man=no", f"--root={root}", unit)


def exposure(unit: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """The "Overall exposure level" of an offline security review, with the result of the run."""
    analyze = tool("systemd-analyze", "systemd")
    result = run(analyze, "security", "--offline=yes", f"--threshold={round(MAX_EXPOSURE * 10)}", unit)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(found.group(1)), result


# --- hes.service: systemd-analyze verify -----------------------------------------------------------


def test_hes_service_verifies_without_a_word(tmp_path: Path) -> None:
    result = verify(unit_root(tmp_path, UNIT.read_text()), "hes.service")
    # Warnings count too (an unknown key, a value systemd ignores): no output at all.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


BREAKAGES: dict[str, tuple[Callable[[str], str], str]] = {
    "bad service type": (lambda t: t.replace("Type=notify", "Type=notifyy"), "service type"),
    "misspelt key": (lambda t: t.replace("WatchdogSec=", "WatchDogSec="), "Unknown key"),
    "bad time span": (lambda t: t.replace("RestartSec=10s", "RestartSec=ten"), "sec value"),
    "bad device rights": (lambda t: t.replace("char-ttySC rw", "char-ttySC rwx"), "device rights"),
    "unknown section": (lambda t: t.replace("[Install]", "[Instal]"), "Unknown section"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_verify_rejects_a_broken_copy(tmp_path: Path, breakage: str) -> None:
    mutate, message = BREAKAGES[breakage]
    broken = mutate(UNIT.read_text())
    assert broken != UNIT.read_text(), "the breakage no longer applies to hes.service: update it"
    result = verify(unit_root(tmp_path, broken), "hes.service")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_verify_rejects_a_missing_executable(tmp_path: Path) -> None:
    """Without the stub, verify must complain exactly where the image has to put the daemon."""
    text = UNIT.read_text()
    result = verify(unit_root(tmp_path, text, stub=False), "hes.service")
    assert result.returncode != 0
    assert f"{exec_path(text)} is not executable" in result.stderr


# --- hes.service: exposure -------------------------------------------------------------------------


def test_exposure_is_at_most_2() -> None:
    level, result = exposure(UNIT)
    assert result.returncode == 0, result.stdout
    assert level <= MAX_EXPOSURE, result.stdout


def test_exposure_check_rejects_an_unhardened_copy(tmp_path: Path) -> None:
    """The same unit with its [Service] cut down to what runs the daemon must fail the threshold."""
    text = UNIT.read_text()
    keep = ("Type", "NotifyAccess", "ExecStart", "User", "Group", "WatchdogSec", "Restart")
    lines = [
        line
        for line in text[text.index("[Service]") : text.index("[Install]")].splitlines()
        if line.split("=", 1)[0] in keep
    ]
    weak = tmp_path / "hes.service"
    weak.write_text(text[: text.index("[Service]")] + "[Service]\n" + "\n".join(lines) + "\n")
    level, result = exposure(weak)
    assert level > MAX_EXPOSURE
    assert result.returncode != 0


# --- hes.service: agreement with the daemon, its CLI and its config ---------------------------------


def test_hes_service_matches_the_daemon_and_the_template() -> None:
    from appliance import cli  # noqa: PLC0415 (the checks below are about these modules)
    from appliance.config import template_path  # noqa: PLC0415

    text = UNIT.read_text()
    assert unit_values(text, "Type") == ["notify"]
    assert unit_values(text, "NotifyAccess") == ["main"]  # app.py notifies from its main thread
    assert unit_values(text, "Restart") == ["on-failure"]
    assert unit_values(text, "StartLimitAction") == ["reboot"]
    # A config error (exit status 2) must neither restart nor end in the reboot escalation.
    assert str(cli.EXIT_CONFIG) in unit_values(text, "RestartPreventExitStatus")[0].split()
    (watchdog,) = unit_values(text, "WatchdogSec")
    assert 5 <= int(watchdog.removesuffix("s")) <= 120  # app.py feeds it every WatchdogSec/2

    # The command line is one the real `hes` parser accepts.
    # (The template is read as TOML: loading it as a config wants the box's TLS files.)
    with template_path().open("rb") as handle:
        template = tomllib.load(handle)
    (command,) = unit_values(text, "ExecStart")
    args = cli._parser().parse_args(command.split()[1:])
    assert args.command == "run"
    # The box's config, then the technician's settings file that the console's `config set` writes.
    assert [str(p) for p in args.config] == ["/etc/hes/hes.toml", template["console"]["settings_file"]]

    # The store directory of the template is the one writable path, and the template's buses are allowed.
    assert template["hes"]["data_dir"] in unit_values(text, "ReadWritePaths")
    allowed = {v.split()[0] for v in unit_values(text, "DeviceAllow")}
    for bus in template["buses"].values():
        driver = re.sub(r"\d+$", "", Path(bus["device"]).name)  # /dev/ttySC0 -> ttySC
        assert f"char-{driver}" in allowed or bus["device"] in allowed, bus["device"]

    # The user and groups are the ones sysusers.d creates.
    sysusers = (SYSTEMD / "sysusers.d/hes.conf").read_text()
    assert re.search(r"^u\s+hes\s", sysusers, re.MULTILINE)
    assert unit_values(text, "User") == ["hes"]
    for group in unit_values(text, "SupplementaryGroups")[0].split():
        assert re.search(rf"^m\s+hes\s+{group}\s*$", sysusers, re.MULTILINE), group


# --- hes.service: the daemon inside the unit's seccomp sandbox ---------------------------------------
#
# systemd turns SystemCallFilter=, SystemCallErrorNumber=, MemoryDenyWriteExecute= and
# RestrictAddressFamilies= into seccomp filters loaded just before it execs the daemon. Those are the
# settings that break Python programs, and systemd is not PID 1 here, so the harness below builds the
# same filters with libseccomp from the unit's own lines and systemd-analyze's group lists. (The
# mount-namespace settings, ProtectSystem= and friends, are not emulated.)

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 4, 5, 7
SHM_EXEC = 0o100000
AF_LIMIT = 64  # above AF_MAX of any kernel in sight


def scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


def syscall_groups() -> dict[str, list[str]]:
    """systemd's syscall groups (@system-service, ...) as systemd-analyze lists them."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in listing.splitlines():
        entry = line.strip()
        if line.startswith("@"):
            current = groups.setdefault(entry, [])
        elif not line.startswith((" ", "\t")):
            current = None
        elif current is not None and entry and not entry.startswith("#"):
            current.append(entry)
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for item in items:
        names |= expand(groups[item], groups) if item.startswith("@") else {item}
    return names


def seccomp_policy(text: str) -> dict:
    """What systemd makes of the unit's seccomp-related lines (allow-list mode, as hes.service uses)."""
    groups = syscall_groups()
    allowed: set[str] | None = None
    for value in unit_values(text, "SystemCallFilter"):
        invert = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        if allowed is None:
            assert not invert, "the harness handles allow lists only: start with SystemCallFilter=@..."
            allowed = names | expand(["@default"], groups)
        elif invert:
            allowed -= names
        else:
            allowed |= names
    errno_name = (unit_values(text, "SystemCallErrorNumber") or ["EPERM"])[0]
    families = (unit_values(text, "RestrictAddressFamilies") or [""])[0].split()
    return {
        "allowed": allowed,
        "errno": getattr(errno, errno_name),
        "mdwe": unit_values(text, "MemoryDenyWriteExecute") == ["yes"],
        "families": {getattr(socket, family) for family in families} if families else None,
    }


def load_filters(policy: dict) -> None:
    """Load the filters into this process; they stay across exec and fork."""
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ScmpArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    def install(default: int, rules: list[tuple[int, str, list[tuple[int, int, int]]]]) -> None:
        ctx = lib.seccomp_init(default)
        for action, name, conditions in rules:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not a system call of this architecture
            array = (ScmpArgCmp * max(len(conditions), 1))(
                *[ScmpArgCmp(a, o, v, v) for a, o, v in conditions]
            )
            if lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array) != 0:
                raise OSError(f"seccomp rule for {name} refused")
        if lib.seccomp_load(ctx) != 0:
            raise OSError("seccomp_load failed")
        lib.seccomp_release(ctx)

    if policy["mdwe"]:  # systemd's seccomp_memory_deny_write_execute()
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        deny = scmp_act_errno(errno.EPERM)
        install(
            SCMP_ACT_ALLOW,
            [(deny, name, [(2, SCMP_CMP_MASKED_EQ, wx)]) for name in ("mmap", "mmap2")]
            + [
                (deny, name, [(2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC)])
                for name in ("mprotect", "pkey_mprotect")
            ]
            + [(deny, "shmat", [(2, SCMP_CMP_MASKED_EQ, SHM_EXEC)])],
        )
    if policy["families"] is not None:  # systemd filters socket() only, like this
        deny = scmp_act_errno(errno.EAFNOSUPPORT)
        rules = [
            (deny, "socket", [(0, SCMP_CMP_EQ, f)]) for f in range(AF_LIMIT) if f not in policy["families"]
        ]
        install(SCMP_ACT_ALLOW, [*rules, (deny, "socket", [(0, SCMP_CMP_GE, AF_LIMIT)])])
    # Last, as systemd does it: the allow list forbids seccomp() itself.
    if policy["allowed"] is not None:
        install(scmp_act_errno(policy["errno"]), [(SCMP_ACT_ALLOW, n, []) for n in sorted(policy["allowed"])])


def probe_filters(policy: dict) -> list[str]:
    """Prove the filters are in force: what the policy forbids must fail. Returns what did not."""
    failures = []
    if policy["mdwe"]:
        try:
            mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
            failures.append("a writable+executable mapping was allowed")
        except PermissionError:
            pass
    if policy["allowed"] is not None and "setpriority" not in policy["allowed"]:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0))
            failures.append("setpriority() was allowed")
        except OSError as exc:
            if exc.errno != policy["errno"]:
                failures.append(f"setpriority() failed with {exc!r}")
    if policy["families"] is not None and socket.AF_NETLINK not in policy["families"]:
        try:
            socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()
            failures.append("an AF_NETLINK socket was allowed")
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, policy["errno"]):  # the latter: socket() denied
                failures.append(f"AF_NETLINK failed with {exc!r}")
    return failures


def sandbox_main(argv: list[str]) -> int:
    """`sandbox UNIT -- COMMAND...`: exec COMMAND under UNIT's seccomp filters."""
    unit, separator, *command = argv
    assert separator == "--" and command, "usage: sandbox UNIT -- COMMAND..."
    policy = seccomp_policy(Path(unit).read_text())
    load_filters(policy)
    failures = probe_filters(policy)
    if failures:
        print("sandbox: the filters are not in force: " + "; ".join(failures), file=sys.stderr)
        return 97
    if "WATCHDOG_USEC" in os.environ:
        os.environ["WATCHDOG_PID"] = str(os.getpid())  # as systemd sets it: exec keeps the pid
    os.execvp(command[0], command)  # noqa: S606 (the command is the test's own)
    return 127  # not reached


def sandboxed(unit: Path, *command: str) -> list[str]:
    return [sys.executable, __file__, "sandbox", str(unit), "--", *command]


def need_sandbox() -> None:
    tool("systemd-analyze", "systemd")
    if ctypes.util.find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed (Debian package libseccomp2)")


def test_sandbox_enforces_what_the_unit_says(tmp_path: Path) -> None:
    """Negative control for the harness: a copy of the unit that also forbids network I/O must make
    a TCP connection fail with the unit's errno, while the probes pass (the filters are in force)."""
    need_sandbox()
    tight = tmp_path / "hes.service"
    tight.write_text(UNIT.read_text().replace("[Install]", "SystemCallFilter=~@network-io\n\n[Install]"))
    script = "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError as e:\n"
    script += "    print(e.errno)\nelse:\n    print('connected')\n"
    tight_run = run(*sandboxed(tight, sys.executable, "-c", script))
    assert tight_run.returncode == 0, tight_run.stderr
    assert tight_run.stdout.strip() == str(errno.EPERM)
    # The real unit lets the same connection through to the network (refused: nobody listens on 9).
    real_run = run(*sandboxed(UNIT, sys.executable, "-c", script))
    assert real_run.stdout.strip() == str(errno.ECONNREFUSED), real_run.stderr


DAEMON_CONFIG = """
[hes]
id = "hes-sandbox"

[uplink]
scan_interval_s = 0.2

[mqtt]
reconnect_min_s = 0.2
reconnect_max_s = 1

[bus_defaults]
timeout_ms = 300
retries = 1

[meter_defaults]
poll_interval_s = 1

[[meters]]
id = "SBX-A1"
bus = "A"
address = 1
model = "sdm630"

[[meters]]
id = "SBX-B1"
bus = "B"
address = 1
model = "generic-wh32"
"""


def test_daemon_runs_in_the_units_sandbox(tmp_path: Path) -> None:
    """`hes run` under hes.service's seccomp filters: READY=1, the watchdog fed, readings over MQTT/TLS
    to the MDM, and a clean SIGTERM, with no forbidden system call on the way."""
    need_sandbox()
    tool("mosquitto", "mosquitto")
    tool("socat", "socat")
    from appliance.sim.substation import Substation  # noqa: PLC0415 (needs the sim extra)

    config = tmp_path / "hes.toml"
    config.write_text(DAEMON_CONFIG)
    notify_path = tmp_path / "notify.sock"
    log_path = tmp_path / "daemon.log"
    with (
        Substation(tmp_path / "run", config) as station,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
    ):
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        mdm = station.mdm().start()
        command = [sys.executable, "-m", "appliance", "run", "--config", str(config)]
        command += ["--config", str(station.overlay)]
        (watchdog,) = unit_values(UNIT.read_text(), "WatchdogSec")
        environment = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "WATCHDOG_USEC": str(int(watchdog.removesuffix("s")) * 1_000_000),
            "PYTHONFAULTHANDLER": "1",
        }
        with log_path.open("wb") as log:
            daemon = subprocess.Popen(sandboxed(UNIT, *command), stdout=log, stderr=log, env=environment)
        messages: list[bytes] = []
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and daemon.poll() is None:
                with contextlib.suppress(TimeoutError):
                    messages += notify.recv(4096).split(b"\n")
                if b"READY=1" in messages and b"WATCHDOG=1" in messages and mdm.unique_readings():
                    break
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=20)
            while True:
                try:
                    messages += notify.recv(4096).split(b"\n")
                except TimeoutError:
                    break
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            mdm.stop()
    log_text = log_path.read_text(errors="replace")
    assert code == 0, log_text
    assert {b"READY=1", b"WATCHDOG=1", b"STOPPING=1"} <= set(messages), (messages, log_text)
    assert mdm.unique_readings(), log_text
    for sign in ("Operation not permitted", "Traceback", "Fatal Python error"):
        assert sign not in log_text, log_text


# --- sysusers.d and tmpfiles.d ---------------------------------------------------------------------


def base_root(tmp_path: Path) -> Path:
    """A root with Debian's base accounts as far as the files need them (dialout is gid 20)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    return root


def test_sysusers_then_tmpfiles_on_a_fresh_root(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "systemd")
    tmpfiles = tool("systemd-tmpfiles", "systemd")
    root = base_root(tmp_path)
    users = run(sysusers, f"--root={root}", SYSTEMD / "sysusers.d/hes.conf")
    assert users.returncode == 0, users.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    group = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    assert passwd["hes"][2:4] == ["950", "950"]
    assert passwd["hes"][6].endswith("nologin")
    assert "hes" in group["dialout"][3].split(",")
    assert "hes" in group["gpio"][3].split(",")

    made = run(tmpfiles, "--create", f"--root={root}", SYSTEMD / "tmpfiles.d/hes.conf")
    assert made.returncode == 0, made.stderr
    for path in ("data/hes", "run/hes"):
        info = (root / path).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (950, 950, 0o750), path
    # The technician's settings exist from the first boot (hes.service names them), empty, and the
    # daemon's to write.
    settings = root / "data/hes/local.toml"
    info = settings.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o7777, info.st_size) == (950, 950, 0o640, 0)


def test_sysusers_and_tmpfiles_reject_what_they_cannot_apply(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers", "systemd")
    tmpfiles = tool("systemd-tmpfiles", "systemd")
    root = base_root(tmp_path)
    # tmpfiles before sysusers: user hes does not exist in the root, so the file cannot apply.
    early = run(tmpfiles, "--create", f"--root={root}", SYSTEMD / "tmpfiles.d/hes.conf")
    assert early.returncode != 0
    assert "hes" in early.stderr
    broken = tmp_path / "broken.conf"
    broken.write_text((SYSTEMD / "sysusers.d/hes.conf").read_text().replace(" 950 ", " 95O "))
    bad = run(sysusers, f"--root={root}", broken)
    assert bad.returncode != 0
    assert "95O" in bad.stderr


# --- journald --------------------------------------------------------------------------------------


def journald_problems(path: Path) -> list[str]:
    """Keys journald does not know: its parser's table ("Journal.Storage", ...) is in its binary."""
    binary = next(
        (
            p
            for p in (Path("/lib/systemd/systemd-journald"), Path("/usr/lib/systemd/systemd-journald"))
            if p.exists()
        ),
        None,
    )
    if binary is None:
        pytest.skip("systemd-journald is not installed (Debian package systemd)")
    known = set(re.findall(rb"Journal\.[A-Za-z]+", binary.read_bytes()))
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return [
        f"{section}.{key}"
        for section in parser.sections()
        for key in parser[section]
        if f"{section}.{key}".encode() not in known
    ]


def test_journald_drop_in(tmp_path: Path) -> None:
    path = SYSTEMD / "journald.conf.d/hes.conf"
    assert journald_problems(path) == []
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    assert parser["Journal"]["Storage"] == "volatile"
    assert re.fullmatch(r"\d+[KMG]", parser["Journal"]["RuntimeMaxUse"])
    misspelt = tmp_path / "hes.conf"
    misspelt.write_text(path.read_text().replace("RuntimeMaxUse=", "RuntimeMaxUsage="))
    assert journald_problems(misspelt) == ["Journal.RuntimeMaxUsage"]


# --- chrony ----------------------------------------------------------------------------------------


def chrony_parse(path: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("chronyd", "chrony"), "-p", "-f", path)


def test_chrony_config_parses_with_and_without_its_commented_options(tmp_path: Path) -> None:
    path = SYSTEMD / "chrony/hes.conf"
    plain = chrony_parse(path)
    assert plain.returncode == 0, plain.stderr
    assert re.search(r"^refclock SHM 0 .*offset .*delay ", plain.stdout, re.MULTILINE)
    assert re.search(r"^makestep ", plain.stdout, re.MULTILINE)
    # The options the comments offer (PPS, an NTP server) must parse too once uncommented.
    enabled = tmp_path / "chrony.conf"
    enabled.write_text(re.sub(r"^#((?:refclock|server) )", r"\1", path.read_text(), flags=re.MULTILINE))
    full = chrony_parse(enabled)
    assert full.returncode == 0, full.stderr
    assert re.search(r"^refclock SOCK ", full.stdout, re.MULTILINE)
    broken = tmp_path / "broken.conf"
    broken.write_text(path.read_text().replace("offset 0.2", "offset 0,2"))
    assert chrony_parse(broken).returncode != 0


# --- gpsd ------------------------------------------------------------------------------------------


def test_gpsd_defaults() -> None:
    """The file is sourced by sh (gpsdctl) and read by systemd (EnvironmentFile=): plain KEY="value"."""
    path = SYSTEMD / "default/gpsd"
    assignments = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r'[A-Z_]+="[^"$`\\]*"', line) for line in assignments), assignments
    shown = run("sh", "-c", '. "$1" && printf "%s\\n" "$DEVICES" "$GPSD_OPTIONS" "$USBAUTO"', "sh", path)
    assert shown.returncode == 0, shown.stderr
    devices, options, usbauto = shown.stdout.splitlines()
    assert devices.split() and all(d.startswith("/dev/") for d in devices.split())
    assert "-n" in options.split()
    assert usbauto == "false"


# --- udev ------------------------------------------------------------------------------------------

UDEV_MATCH = {"ACTION", "SUBSYSTEM", "SUBSYSTEMS", "KERNEL", "KERNELS", "DRIVER", "DRIVERS", "ATTR", "ENV"}
UDEV_ASSIGN = {"GROUP", "OWNER", "MODE", "SYMLINK", "TAG", "RUN", "ENV"}


def udev_problems(text: str) -> list[str]:
    """A rule's keys either match (==, !=) or assign (=, +=): mixing them up fails silently in udev."""
    problems = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        for pair in re.split(r",\s*", line.strip()):
            found = re.fullmatch(r'([A-Z]+)(?:\{[^}]+\})?(==|!=|\+=|-=|:=|=)"[^"]*"', pair)
            if not found:
                problems.append(f"cannot parse {pair!r}")
            elif found.group(2) in ("==", "!=") and found.group(1) not in UDEV_MATCH:
                problems.append(f"{found.group(1)} cannot be matched")
            elif found.group(2) not in ("==", "!=") and found.group(1) not in UDEV_ASSIGN:
                problems.append(f"{found.group(1)} cannot be assigned")
    return problems


def test_udev_rule_gives_gpiochips_to_gpio() -> None:
    text = (SYSTEMD / "udev/99-hes-gpio.rules").read_text()
    assert udev_problems(text) == []
    assert re.search(r'KERNEL=="gpiochip[^"]*".*GROUP="gpio".*MODE="0660"', text)
    assert udev_problems(text.replace('GROUP="gpio"', 'GROUP=="gpio"')) == ["GROUP cannot be matched"]


# --- the console getty -----------------------------------------------------------------------------

GETTY_TEMPLATE = Path("/lib/systemd/system/serial-getty@.service")
GETTY_DROP_IN = SYSTEMD / "serial-getty@.service.d/hes-console.conf"


def getty_root(tmp_path: Path, drop_in: str) -> Path:
    """Debian's serial-getty@.service with the drop-in beside it, and a stub agetty."""
    if not GETTY_TEMPLATE.exists():
        pytest.skip(f"{GETTY_TEMPLATE} is missing (Debian package systemd)")
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    (units / "serial-getty@.service.d").mkdir(parents=True)
    shutil.copy(GETTY_TEMPLATE, units)
    (units / "serial-getty@.service.d/hes-console.conf").write_text(drop_in)
    (root / "sbin").mkdir()
    (root / "sbin/agetty").write_text("#!/bin/sh\n")
    (root / "sbin/agetty").chmod(0o755)
    return root


def test_console_getty_drop_in(tmp_path: Path) -> None:
    text = GETTY_DROP_IN.read_text()
    result = verify(getty_root(tmp_path / "good", text), "serial-getty@ttyAMA10.service")
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # The drop-in is really read: breaking it breaks the unit.
    broken = text.replace("\nExecStart=-", "\nExecStrat=-")
    result = verify(getty_root(tmp_path / "broken", broken), "serial-getty@ttyAMA10.service")
    assert result.returncode != 0
    assert "ExecStrat" in result.stderr
    # Every long option it gives agetty is one this agetty knows.
    agetty_help = run(tool("agetty", "util-linux"), "--help").stdout
    for option in re.findall(r"--[a-z0-9-]+", unit_values(text, "ExecStart")[-1]):
        assert option in agetty_help, option


if __name__ == "__main__":
    if sys.argv[1:2] == ["sandbox"]:
        sys.exit(sandbox_main(sys.argv[2:]))
    sys.exit(f"usage: {sys.argv[0]} sandbox UNIT -- COMMAND...")
