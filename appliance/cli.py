"""The `hes` command: one entry point for the daemon, the demo and the technician's tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from appliance import __version__
from appliance.app import run
from appliance.clock import Clock
from appliance.collect.collector import discover_standalone
from appliance.collect.dlms.probe import add_probe_parser, run_probe
from appliance.collect.listener import listener_port_taken
from appliance.config import Config, load_config, missing_credentials
from appliance.console.admin import add_console_parser, run_console_command
from appliance.control import ControlClient
from appliance.errors import ConfigError, DaemonUnavailable, HesError
from appliance.status import format_status, status_without_daemon
from appliance.store import open_store
from appliance.tariff.export import write_export
from appliance.tariff.service import settings_from_config
from appliance.uplink import compact

EXIT_CONFIG = 2
DEFAULT_CONFIG = Path("/etc/hes/hes.toml")


def _add_box_config(parser: argparse.ArgumentParser) -> None:
    """`--config`, for the commands that work on this box's own config (default /etc/hes/hes.toml)."""
    parser.add_argument(
        "--config",
        "-c",
        action="append",
        type=Path,
        metavar="FILE",
        help=f"config file(s) of the box (default: {DEFAULT_CONFIG})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hes",
        description="HES Appliance: a head-end system for smart-meter networks in one box.",
        allow_abbrev=False,  # an abbreviated option must never pass for a secret's file option
    )
    parser.add_argument("--version", action="version", version=f"hes {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon", description="Run the head-end daemon.")
    run.add_argument(
        "--config",
        "-c",
        action="append",
        required=True,
        type=Path,
        metavar="FILE",
        help="config file laid over the template; give several to overlay them in order",
    )

    demo = commands.add_parser(
        "demo",
        help="run a simulated substation end to end",
        description="Simulated meters on ptys, a private Mosquitto, the daemon and an MDM listener "
        "that prints every CIM message it receives.",
    )
    demo.add_argument(
        "--duration", type=float, default=0, metavar="SECONDS", help="stop after this long (0: Ctrl-C)"
    )
    demo.add_argument(
        "--broker", metavar="HOST:PORT", help="use this running broker (plain TCP) instead of a private one"
    )
    demo.add_argument(
        "--summary-json", type=Path, metavar="FILE", help="also write the closing summary as JSON"
    )
    demo.add_argument("--config", type=Path, metavar="FILE", help="demo config (default: config/demo.toml)")
    demo.add_argument("--run-dir", type=Path, metavar="DIR", help="keep ptys, store and broker files here")

    config = commands.add_parser("config", help="check config files", description="Work with config files.")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check", help="validate config files", description="Validate config files laid over the template."
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")

    status = commands.add_parser(
        "status",
        help="show the daemon's health and the uplink backlog",
        description="The daemon's last status (status.json in hes.data_dir) with the backlog read "
        "fresh from the store (read-only): works whether or not the daemon runs.",
    )
    _add_box_config(status)
    status.add_argument("--json", action="store_true", help="print the status document as JSON")

    decode = commands.add_parser(
        "decode",
        help="turn a compact (CBOR) message back into CIM XML",
        description="Print the IEC 61968-100 XML message that the XML encoding would have sent.",
    )
    decode.add_argument("file", type=Path, nargs="?", metavar="FILE", help="the message (default: stdin)")

    discover = commands.add_parser(
        "discover",
        help="find meters on a bus that nobody registered (daemon stopped)",
        description="Ask every Modbus unit id and HDLC address in [discovery]'s ranges that no polled meter "
        "uses; register what answers as unassigned and queue an EndDeviceEvent for the MDM. While the "
        "daemon runs it holds the port: use the console's `discover bus A`.",
    )
    discover.add_argument("--bus", required=True, metavar="NAME", help="the bus to scan, e.g. A")
    _add_box_config(discover)

    add_probe_parser(commands)
    _add_export_parser(commands)
    add_console_parser(commands, _add_box_config)
    return parser


def _box(args: argparse.Namespace) -> Config:
    """The config of this box: the files given, or /etc/hes/hes.toml."""
    return load_config(*(args.config or [DEFAULT_CONFIG]))


def _config_check(args: argparse.Namespace) -> int:
    config = load_config(*args.files)
    for warning in (listener_port_taken(config.listener), missing_credentials(config)):
        if warning is not None:
            print(f"hes: warning: {warning}", file=sys.stderr)
    print(f"ok: {len(config.meters)} meters on buses {', '.join(sorted(config.buses))}")
    return 0


def _decode(args: argparse.Namespace) -> int:
    data = args.file.read_bytes() if args.file else sys.stdin.buffer.read()
    sys.stdout.buffer.write(compact.to_xml(data) + b"\n")
    return 0


def _discover(args: argparse.Namespace) -> int:
    for device in discover_standalone(_box(args), args.bus):
        found = {"mrid": device.mrid, "protocol": str(device.protocol), "address": device.address}
        print(json.dumps(found | {"identity": device.identity}))
    return 0


def _demo(args: argparse.Namespace) -> int:
    # The simulator's packages (extra "sim") are not installed on the appliance itself.
    from appliance.sim.demo import run_demo  # noqa: PLC0415

    return run_demo(args)


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": lambda args: run(load_config(*args.config)),
    "config": _config_check,
    "status": lambda args: _status(_box(args), args.json),
    "console": lambda args: run_console_command(args, lambda: _box(args)),
    "export": lambda args: _export_billing(_box(args), args.period, args.out),
    "probe": run_probe,
    "decode": _decode,
    "discover": _discover,
    "demo": _demo,
}


def main(argv: list[str] | None = None) -> int:
    """Run `hes`; returns the exit code (2 for a bad config)."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"hes: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except HesError as exc:
        print(f"hes: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hes: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1


def console_shell() -> int:
    """`hes-console`, the serial console account's login shell (a login shell takes no arguments)."""
    return main(["console"])


def _status(config: Config, as_json: bool) -> int:
    """The running daemon's status over the control socket; without the daemon, status.json and
    the store."""
    document = None
    try:
        client = ControlClient(config.console.socket)
        try:
            document = client.request("status")
        finally:
            client.close()
    except DaemonUnavailable:
        pass
    if document is None:
        store = open_store(config, readonly=True) if config.store_path.exists() else None
        try:
            document = status_without_daemon(config, store, Clock())
        finally:
            if store is not None:
                store.close()
    print(json.dumps(document, indent=2) if as_json else format_status(document))
    return 0


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="export data for enterprise software", description="Export data for an ERP or MDM."
    )
    kinds = export.add_subparsers(dest="export_command", required=True, metavar="WHAT")
    billing = kinds.add_parser(
        "billing",
        help="billing determinants and costs as CSV and CIM XML (docs/tariffs.md)",
        description="Write billing-<period>.csv and billing-<period>.xml (a created MeterReadings "
        "EventMessage) for the billing period of every priced meter that begins in that month.",
    )
    billing.add_argument(
        "--period", required=True, metavar="YYYY-MM", help="the month the billing period begins in"
    )
    billing.add_argument("--out", type=Path, default=Path.cwd(), metavar="DIR", help="where (default: here)")
    _add_box_config(billing)


def _export_billing(config: Config, period: str, out: Path) -> int:
    """`hes export billing`: read-only on the store; works whether or not the daemon runs."""
    store = open_store(config, readonly=True)
    try:
        settings = settings_from_config(config.tariffs)
        paths = write_export(store, settings, period, out, config.hes.id, Clock().now())
    finally:
        store.close()
    print("\n".join(str(path) for path in paths))
    return 0
