"""The `hes` command: one entry point for the daemon, the demo and the technician's tools."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from appliance import __version__
from appliance.app import run
from appliance.config import load_config
from appliance.errors import ConfigError, HesError

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hes", description="HES Appliance: a head-end system for smart-meter networks in one box."
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
    return 1
