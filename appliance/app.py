"""The daemon: builds the components from the config, runs them, and stops them cleanly.

Threads: one per bus, the outbox pump, the command dispatcher, the GPS watcher, the WAN health
monitor, the console's control server, the WAN listener, the tariff service and paho's network
thread. The main thread supervises them and tells systemd (sd_notify) that the box is ready and alive.
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
from dataclasses import dataclass
from typing import Any

from appliance import status
from appliance.clock import Clock
from appliance.collect.collector import Collector
from appliance.collect.listener import DlmsListener
from appliance.commands.dispatcher import CommandDispatcher
from appliance.config import Config
from appliance.console.accounts import import_accounts, provisioned_file
from appliance.console.spool import import_spool
from appliance.control import EXIT_RESTART, ControlServer, DaemonHandlers
from appliance.errors import HesError, StoreError
from appliance.housekeeping import Housekeeping
from appliance.hw.gpio import open_gpio
from appliance.hw.gps import GpsWatcher
from appliance.hw.leds import Led, LedPanel, open_panel
from appliance.hw.modem import Modem
from appliance.model import epoch
from appliance.panel import inputs_from_status, patterns, store_failed
from appliance.store import Store, open_store
from appliance.store.registry import register_config_meters
from appliance.tariff.service import TariffService, relay_through, settings_from_config
from appliance.uplink.health import HealthMonitor
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


@dataclass
class Daemon:
    """The daemon's parts, built from the config; `threads` are those the main loop watches."""

    config: Config
    clock: Clock
    store: Store
    leds: LedPanel
    stop: threading.Event
    link: MqttLink
    pump: OutboxPump
    collector: Collector
    health: HealthMonitor
    control: ControlServer
    threads: list[Any]  # each has is_alive(), a name and a `heartbeat`


def build(config: Config, clock: Clock, store: Store, leds: LedPanel, stop: threading.Event) -> Daemon:
    """Every component, wired; nothing started yet."""
    stores = lambda: open_store(config)  # noqa: E731 - each thread opens its own connection
    housekeeping = Housekeeping(config, clock)
    link = MqttLink(config, queue.Queue())
    pump = OutboxPump(config, stores, link, clock, housekeeping, stop)
    collector = Collector(config, store, stores, clock, housekeeping, pump.notify, stop)
    collector.on_request(lambda: leds.flash(Led.RS485))
    # No gpsd configured: no watcher, and the clock stays UNSYNCED.
    gps = [GpsWatcher(config, clock, stores, stop)] if config.clock.gpsd_host else []
    commands = CommandDispatcher(config, stores, collector, link, clock, pump.notify, stop)
    health = HealthMonitor(config, link, _modem(config), stores, clock, stop)
    # The console's control socket: its commands go to the buses through the collector.
    control = ControlServer(config, DaemonHandlers(stop, collector, clock, leds), stores, clock, stop)
    # DCUs and meters that call over the WAN (off unless [listener] enabled).
    listener = (
        [DlmsListener(config, stores, clock, housekeeping, pump.notify, stop)]
        if config.listener.enabled
        else []
    )
    collector.listener = listener[0] if listener else None  # commands to the WAN meters that call
    # Costs, billing periods and prepay relays; it runs without [tariffs] meters too (the MDM may
    # assign tariffs), and an idle round is a few queries.
    tariffs = TariffService(
        settings_from_config(config.tariffs), stores, clock, relay_through(collector), pump.notify, stop
    )
    threads = [pump, *collector.workers.values(), *gps, commands, health, control, *listener, tariffs]
    return Daemon(config, clock, store, leds, stop, link, pump, collector, health, control, threads)


def run(config: Config) -> int:
    """Run the daemon until SIGTERM or SIGINT; returns the process exit code."""
    setup_logging(config.hes.log_level)
    leds = open_panel(config.leds)  # power lit steadily until the main loop beats
    clock = Clock(config.clock)
    store = open_store(config)
    register_config_meters(store, config.meters, epoch(clock.now()))
    # The first console accounts of a fresh box, from the card (hes-firstboot copied hes/console-users).
    import_accounts(store, provisioned_file(config), epoch(clock.now()))
    # What the console audited while the daemon was down (console/spool.py).
    import_spool(store, config)

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    # `kill -USR1 <pid>` writes every thread's stack to the journal: the field's way to see a hang.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    daemon = build(config, clock, store, leds, stop)
    workers = list(daemon.collector.workers.values())
    log.info(
        "HES %s starting: %d meters on %d buses, store %s, broker %s:%d",
        config.hes.id,
        sum(len(w.meters()) for w in workers),
        len(workers),
        config.store_path,
        config.mqtt.host,
        config.mqtt.port,
    )
    daemon.link.start()
    for thread in daemon.threads:  # the bus workers among them
        thread.start()
    sd_notify("READY=1")
    exit_code = supervise(daemon)

    sd_notify("STOPPING=1")
    log.info("stopping")
    stop.set()
    for thread in daemon.threads:
        thread.join(timeout=10)
    daemon.link.stop()
    store.close()
    leds.close()
    return EXIT_RESTART if daemon.control.handlers.restart_requested else exit_code


def supervise(daemon: Daemon) -> int:
    """The main loop: the heartbeat LED, the MQTT link, dead or hung threads, the systemd watchdog
    and the status. Returns when told to stop (0) or when a thread died (1)."""
    next_status = next_watchdog = 0.0
    watchdog = watchdog_interval()
    threads = daemon.threads
    while not daemon.stop.wait(min(1.0, watchdog or 1.0)):
        daemon.leds.beat()
        daemon.link.maintain()
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            log.error("thread(s) %s died; stopping so systemd restarts the daemon", ", ".join(dead))
            return 1
        now = time.monotonic()
        stalled = tuple(t.name for t in threads if now - t.heartbeat >= STALL_S)
        # Fed only while every worker is alive and not hung: otherwise systemd restarts us.
        if watchdog and now >= next_watchdog and not stalled:
            sd_notify("WATCHDOG=1")
            next_watchdog = now + watchdog
        if now >= next_status:
            next_status = now + daemon.config.uplink.status_interval_s
            _report_status(daemon, stalled)
    return 0


def _modem(config: Config) -> Modem | None:
    """The GSM/LTE modem, if the box has one; without working GPIO it runs without power and reset."""
    if not config.modem.enabled:
        return None
    gpio = None
    if config.modem.power_pin >= 0 or config.modem.reset_pin >= 0:
        try:
            gpio = open_gpio(config.modem.gpio)
        except HesError as exc:
            log.error("modem: %s; no power cycle or reset line", exc)
    return Modem(config.modem, gpio)


def _report_status(daemon: Daemon, stalled: tuple[str, ...]) -> None:
    """Refresh the retained status message, status.json and the LED panel; a failure here never
    stops the daemon."""
    link, pump, leds = daemon.link, daemon.pump, daemon.leds
    try:
        document = status.snapshot(
            daemon.config,
            daemon.store,
            daemon.clock,
            connected=link.connected.is_set(),
            drain_rate=pump.drain_rate(),
            published=pump.published,
            acknowledged=pump.acknowledged,
            wan=daemon.health.snapshot(),
        )
        buses_running = len(daemon.collector.workers)
        inputs = inputs_from_status(document, stalled_threads=stalled, buses_running=buses_running)
        leds.show(patterns(inputs))
        document["leds"] = leds.patterns()
        status.write_status_file(daemon.config, document)
        link.publish_status(document)
    except StoreError as exc:
        leds.show(store_failed())
        log.warning("status not refreshed: %s", exc)
    except (HesError, OSError) as exc:
        log.warning("status not refreshed: %s", exc)
