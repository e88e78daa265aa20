"""The daemon: builds the components from the config, runs them, and stops them cleanly.

Threads: one per bus, the outbox pump, paho's network thread. The main thread supervises them and
tells systemd (sd_notify) that the box is ready and alive.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import signal
import socket
import threading
import time

from appliance import status
from appliance.clock import Clock
from appliance.collect.bus import BusWorker
from appliance.config import Config
from appliance.errors import HesError
from appliance.housekeeping import Housekeeping
from appliance.model import epoch
from appliance.store import Store, open_store
from appliance.store.registry import register_config_meters
from appliance.uplink.mqtt import MqttLink
from appliance.uplink.outbox import OutboxPump

log = logging.getLogger("hes")

STALL_S = 30.0  # a thread whose heartbeat is older than this is hung: stop feeding the watchdog


def sd_notify(message: str) -> None:
    """Tell systemd something (READY=1, WATCHDOG=1, ...); a no-op outside systemd.

    Never blocks: a notification lost because nobody reads the socket is better than a hung daemon.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.send(message.encode(), socket.MSG_DONTWAIT)
        except OSError as exc:
            log.debug("sd_notify %s not delivered: %s", message, exc)


def watchdog_interval() -> float | None:
    """How often systemd wants WATCHDOG=1 (half its WatchdogSec), or None when it does not."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


def setup_logging(level: str) -> None:
    """Log to stderr; under systemd journald adds the timestamps itself."""
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level.upper(), format=stamp + "%(levelname)s %(name)s: %(message)s")


def run(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the process exit code."""
    setup_logging(config.hes.log_level)
    clock = Clock()
    store = open_store(config)
    register_config_meters(store, config.meters, epoch(clock.now()))

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # `kill -USR1 <pid>` writes every thread's stack to the journal: the field's way to see a hang.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    housekeeping = Housekeeping(config, clock)
    link = MqttLink(config, queue.Queue())
    pump = OutboxPump(config, lambda: open_store(config), link, clock, housekeeping, stop)
    workers = [
        BusWorker(
            bus,
            [m for m in config.meters if m.bus == name],
            lambda: open_store(config),
            clock,
            housekeeping,
            pump.notify,
            stop,
        )
        for name, bus in config.buses.items()
        if bus.enabled and any(m.bus == name for m in config.meters)
    ]
    threads: list[BusWorker | OutboxPump] = [pump, *workers]
    log.info(
        "HES %s starting: %d meters on %d buses, store %s, broker %s:%d",
        config.hes.id,
        len(config.meters),
        len(workers),
        config.store_path,
        config.mqtt.host,
        config.mqtt.port,
    )
    link.start()
    for thread in threads:
        thread.start()
    sd_notify("READY=1")

    exit_code = 0
    next_status = next_watchdog = 0.0
    watchdog = watchdog_interval()
    while not stop.wait(min(1.0, watchdog or 1.0)):
        link.maintain()
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            log.error("thread(s) %s died; stopping so systemd restarts the daemon", ", ".join(dead))
            exit_code = 1
            break
        # Fed only while every worker is alive and not hung: otherwise systemd restarts us.
        alive = all(time.monotonic() - t.heartbeat < STALL_S for t in threads)
        if watchdog and time.monotonic() >= next_watchdog and alive:
            sd_notify("WATCHDOG=1")
            next_watchdog = time.monotonic() + watchdog
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + config.uplink.status_interval_s
            _report_status(config, store, clock, link, pump)

    sd_notify("STOPPING=1")
    log.info("stopping")
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    link.stop()
    store.close()
    return exit_code


def _report_status(config: Config, store: Store, clock: Clock, link: MqttLink, pump: OutboxPump) -> None:
    """Refresh the retained status message and status.json; a failure here never stops the daemon."""
    try:
        document = status.snapshot(
            config,
            store,
            clock,
            connected=link.connected.is_set(),
            drain_rate=pump.drain_rate(),
            published=pump.published,
            acknowledged=pump.acknowledged,
        )
        status.write_status_file(config, document)
        link.publish_status(document)
    except (HesError, OSError) as exc:
        log.warning("status not refreshed: %s", exc)
