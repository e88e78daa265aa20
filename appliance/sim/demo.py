"""`hes demo`: a simulated substation end to end, printed as the MDM sees it."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from appliance.config import template_path
from appliance.hw.leds import render
from appliance.sim.mdm import Received
from appliance.sim.substation import Substation, describe
from appliance.status import STATUS_FILE
from appliance.store.outbox import backlog
from appliance.store.readings import count_readings


def _broker(text: str | None) -> tuple[str, int] | None:
    if not text:
        return None
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo until --duration passes or Ctrl-C; print and optionally save a summary."""
    base = args.config or template_path().parent / "demo.toml"
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="hes-demo-"))
    substation = Substation(run_dir, base, _broker(args.broker), gps=True, modem=True)
    config = substation.config
    kinds = ", ".join(sorted({m.protocol.value for m in config.meters}))
    print(f"HES demo: {len(config.meters)} simulated meters ({kinds}) on buses {', '.join(substation.lines)}")
    print(f"  run directory {run_dir} (daemon log: {substation.log})")
    host, port = substation.broker_address
    print(f"  broker {host}:{port} ({'TLS with client certificates' if substation.pki else 'plain TCP'})")
    print(
        "  Ctrl-C ends the demo" + (f"; it ends by itself after {args.duration:g} s" if args.duration else "")
    )

    def show(message: Received) -> None:
        print(describe(message), flush=True)

    summary: dict = {}
    with substation:
        mdm = substation.mdm(show).start()
        substation.start_daemon()
        try:
            deadline = time.monotonic() + args.duration if args.duration else float("inf")
            panel: dict | None = None
            while time.monotonic() < deadline:
                if substation.daemon is None or substation.daemon.poll() is not None:
                    print(f"the daemon exited; see {substation.log}")
                    break
                panel = _show_panel(substation, panel)
                time.sleep(0.2)
        except KeyboardInterrupt:
            print()
        finally:
            _drain(substation)
            code = substation.stop_daemon()
            time.sleep(0.3)  # the last PUBACKed messages reach the listener
            mdm.stop()
            summary = _summary(substation, mdm.unique_readings(), len(mdm.snapshot()), code)
    print("summary: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()))
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["readings_collected"] and summary["daemon_exit_code"] == 0 else 1


def _show_panel(substation: Substation, shown: dict | None) -> dict | None:
    """Print the daemon's LED panel (from its status.json) when it changed; returns what is shown."""
    try:
        document = json.loads((substation.config.hes.data_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):  # not written yet, or being replaced
        return shown
    leds = document.get("leds")
    if leds and leds != shown:
        print("LED panel: " + render(leds, colour=sys.stdout.isatty()), flush=True)
        return leds
    return shown


def _drain(substation: Substation, timeout: float = 5.0) -> None:
    """Give the outbox a moment to send what the last polls collected."""
    substation.wait_for(substation.outbox_drained, timeout, interval=0.2)


def _summary(substation: Substation, unique: dict, messages: int, code: int | None) -> dict:
    store = substation.open_store()
    try:
        waiting = backlog(store)
        collected = count_readings(store)
    finally:
        store.close()
    return {
        "readings_collected": collected,
        "readings_published": waiting["acked_readings"] + waiting["pending_readings"],
        "readings_acknowledged": waiting["acked_readings"],
        "readings_unsent": waiting["unsent_readings"],
        "mdm_messages": messages,
        "mdm_unique_readings": len(unique),
        "daemon_exit_code": code,
    }
