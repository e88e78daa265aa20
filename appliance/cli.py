"""The `hes` command: one entry point for the daemon, the demo and the technician's tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from appliance import __version__
from appliance.app import run
from appliance.clock import Clock
from appliance.collect.dlms.probe import add_probe_parser, run_probe
from appliance.config import Config, load_config
from appliance.errors import ConfigError, HesError
from appliance.status import format_status, read_status
from appliance.store import open_store
from appliance.uplink import compact

EXIT_CONFIG = 2
DEFAULT_CONFIG = Path("/etc/hes/hes.toml")


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
    status.add_argument(
        "--config",
        "-c",
        action="append",
        type=Path,
        metavar="FILE",
        help=f"config file(s) of the box (default: {DEFAULT_CONFIG})",
    )
    status.add_argument("--json", action="store_true", help="print the status document as JSON")

    decode = commands.add_parser(
        "decode",
        help="turn a compact (CBOR) message back into CIM XML",
        description="Print the IEC 61968-100 XML message that the XML encoding would have sent.",
    )
    decode.add_argument("file", type=Path, nargs="?", metavar="FILE", help="the message (default: stdin)")

    add_probe_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `hes`; returns the exit code (2 for a bad config)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run(load_config(*args.config))
        if args.command == "config":
            config = load_config(*args.files)
            print(f"ok: {len(config.meters)} meters on buses {', '.join(sorted(config.buses))}")
            return 0
        if args.command == "status":
            return _status(load_config(*(args.config or [DEFAULT_CONFIG])), args.json)
        if args.command == "probe":
            return run_probe(args)
        if args.command == "decode":
            data = args.file.read_bytes() if args.file else sys.stdin.buffer.read()
            sys.stdout.buffer.write(compact.to_xml(data) + b"\n")
            return 0
        if args.command == "demo":
            # The simulator's packages (extra "sim") are not installed on the appliance itself.
            from appliance.sim.demo import run_demo  # noqa: PLC0415

            return run_demo(args)
    except ConfigError as exc:
        print(f"hes: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except HesError as exc:
        print(f"hes: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hes: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    return 1


def _status(config: Config, as_json: bool) -> int:
    store = open_store(config, readonly=True) if config.store_path.exists() else None
    try:
        document = read_status(config, store, Clock())
    finally:
        if store is not None:
            store.close()
    print(json.dumps(document, indent=2) if as_json else format_status(document))
    return 0
