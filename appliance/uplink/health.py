"""WAN health and the recovery ladder.

Health comes from three places: the modem (SIM, signal, registration, operator), the data path (MQTT
connected, the round trip of a QoS 1 ping publish, reconnects, the interface's bytes up and down) and
the backlog (which the status document shows beside it). When the data path stays lost for
`wan.down_after_s`, the ladder climbs one rung per `wan.rung_wait_s`: reconnect MQTT, re-attach data
(`wan.attach_command`), reset the modem, power-cycle it. After the top rung it starts again from the
bottom with doubling waits, and resets and power cycles are capped per 24 hours: a wrong APN or a
barred SIM never turns into a reset loop. A missing SIM or a network that denies registration skips
the resets altogether (a person has to act), and the alarm says why.

`RecoveryLadder` is the decision, pure and clocked by its caller; `HealthMonitor` is the thread
that looks, acts, raises the alarms (EndDeviceEvents of the HES itself, through the outbox) and
keeps the `wan` part of the status document.
"""

from __future__ import annotations

import collections
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from appliance.clock import Clock
from appliance.config import Config
from appliance.errors import HesError
from appliance.hw.modem import Modem, ModemStatus
from appliance.model import Event
from appliance.store import Store
from appliance.uplink.cim import format_time
from appliance.uplink.messages import enqueue_alarm
from appliance.uplink.mqtt import MqttLink

log = logging.getLogger(__name__)

# The HES's own WAN alarms (type.domain.subDomain.eventOrAction, CIM-NOTES section 5; domain 1
# Communication, 19 Modem; subdomain 88 Recovery). No public code exists: ours, to agree with the MDM.
WAN_LOST = "0.1.0.47"  # Communication / LossDetected
WAN_RESTORED = "0.1.0.49"  # Communication / Re-established
MODEM_RESET = "0.19.0.215"  # Modem / ResetOccurred (by AT, the reset line or a power cycle)
RECOVERY_CAPPED = "0.1.88.85"  # Communication / Recovery / Failed: resets used up for 24 hours

DAY_S = 86400.0
PING_FAILURES_DOWN = 2  # pings in a row without PUBACK that make a connected link count as lost
TICK_S = 1.0  # the thread's heartbeat period; checks run every wan.check_interval_s


class Rung(Enum):
    """The recovery ladder, gentlest first."""

    RECONNECT = "reconnect MQTT"
    REATTACH = "re-attach data"
    MODEM_RESET = "reset the modem"
    POWER_CYCLE = "power-cycle the modem"


DISRUPTIVE = frozenset({Rung.MODEM_RESET, Rung.POWER_CYCLE})


class WanState(StrEnum):
    """The WAN at a glance, for the LED panel: up, trying (connecting), or needing a person (down)."""

    UP = "up"
    CONNECTING = "connecting"
    DOWN = "down"


@dataclass(frozen=True)
class Step:
    """What the ladder decided at one look: alarms to raise and at most one rung to climb."""

    lost: bool = False  # the outage just outlasted down_after_s
    restored_after_s: float | None = None  # the link is back after an outage that was declared
    capped: bool = False  # a reset or power cycle was due but the 24-hour cap forbids it
    action: Rung | None = None
    rungs: tuple[Rung, ...] = ()  # with restored_after_s: the rungs climbed during the outage


@dataclass
class RecoveryLadder:
    """Which rung to climb when, given whether the link is up. Times are the caller's monotonic clock."""

    down_after_s: float
    rung_wait_s: float
    backoff_max_s: float
    max_resets_per_day: int
    available: frozenset[Rung]
    down_since: float | None = None
    declared: bool = False  # the loss was announced (alarm) and recovery started
    capped: bool = False
    climbs: int = 0  # complete climbs without success in this outage
    taken: list[Rung] = field(default_factory=list)  # rungs climbed in this outage
    _next_rung: int = 0
    _next_at: float = 0.0
    _disruptions: collections.deque[float] = field(default_factory=collections.deque)

    def resets_in_day(self, now: float) -> int:
        """Resets and power cycles within the last 24 hours."""
        while self._disruptions and self._disruptions[0] <= now - DAY_S:
            self._disruptions.popleft()
        return len(self._disruptions)

    def observe(self, now: float, up: bool, blocker: str | None = None) -> Step:
        """One look. `blocker` names a fault no reset cures (no SIM, registration denied)."""
        if up:
            if self.down_since is None:
                return Step()
            step = (
                Step(restored_after_s=now - self.down_since, rungs=tuple(self.taken))
                if self.declared
                else Step()
            )
            self.down_since, self.declared, self.capped, self.climbs = None, False, False, 0
            self.taken, self._next_rung = [], 0
            return step
        if self.down_since is None:
            self.down_since, self._next_at = now, now + self.down_after_s
        if now < self._next_at:
            return Step()
        lost, self.declared = not self.declared, True
        capped_now = False
        order = list(Rung)
        while self._next_rung < len(order):
            rung = order[self._next_rung]
            self._next_rung += 1
            if rung not in self.available or (rung in DISRUPTIVE and blocker):
                continue
            if rung in DISRUPTIVE:
                if self.resets_in_day(now) >= self.max_resets_per_day:
                    capped_now = capped_now or not self.capped  # one alarm each time the cap is hit
                    self.capped = True
                    continue
                self._disruptions.append(now)
                self.capped = False
            self._next_at = now + self.rung_wait_s
            self.taken.append(rung)
            return Step(lost=lost, capped=capped_now, action=rung)
        self.climbs += 1
        self._next_rung = 0
        self._next_at = now + min(self.rung_wait_s * 2**self.climbs, self.backoff_max_s)
        return Step(lost=lost, capped=capped_now)


def wan_alarm(
    hes_id: str, code: str, created: datetime, reason: str, severity: str, details: dict[str, Any]
) -> Event:
    """One of the WAN alarms above, for the HES itself (Assets/mRID = hes.id)."""
    return Event(
        device_id=hes_id,
        event_type=code,
        created=created,
        reason=reason,
        severity=severity,
        details=tuple((name, str(value)) for name, value in details.items() if value is not None),
    )


def interface_bytes(interface: str) -> tuple[int, int] | None:
    """(received, sent) bytes of a network interface since it came up, None if it does not exist."""
    if not interface:
        return None
    statistics = Path("/sys/class/net") / interface / "statistics"
    try:
        return int((statistics / "rx_bytes").read_text()), int((statistics / "tx_bytes").read_text())
    except (OSError, ValueError):
        return None


class HealthMonitor(threading.Thread):
    """Watches the WAN, climbs the recovery ladder, raises the alarms; owns the modem."""

    def __init__(
        self,
        config: Config,
        link: MqttLink,
        modem: Modem | None,
        store_factory: Callable[[], Store],
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="wan-health", daemon=True)
        self.config, self.link, self.modem, self.clock = config, link, modem, clock
        self._store_factory, self._halt = store_factory, stop
        self.heartbeat = time.monotonic()
        available = {Rung.RECONNECT}
        if config.wan.attach_command:
            available.add(Rung.REATTACH)
        if modem is not None:
            available.add(Rung.MODEM_RESET)
            if modem.can_power_cycle:
                available.add(Rung.POWER_CYCLE)
        wan = config.wan
        self.ladder = RecoveryLadder(
            wan.down_after_s, wan.rung_wait_s, wan.backoff_max_s, wan.max_resets_per_day, frozenset(available)
        )
        self.modem_status: ModemStatus | None = None
        self.rtt_s: float | None = None
        self.ping_failures = 0
        self.last_action: tuple[datetime, str] | None = None
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] = {"state": WanState.CONNECTING.value}
        # When to reconnect MQTT once a reset modem has booted, and (power key only) when to look
        # whether the modem came up or needs one more press: a key cannot tell on from off.
        self._reconnect_at: float | None = None
        # At start too, after boot_s: a modem that powered up with the box may still be booting.
        self._power_check_at: float | None = (
            time.monotonic() + modem.spec.boot_s
            if modem is not None and modem.can_power_cycle and modem.spec.power_kind == "pwrkey"
            else None
        )
        self._modem_silent_logged = False

    def snapshot(self) -> dict[str, Any]:
        """The `wan` part of the status document (a copy; safe from any thread)."""
        with self._lock:
            return dict(self._snapshot)

    @property
    def state(self) -> WanState:
        """Up, connecting or down: what the WAN LED shows."""
        return WanState(self.snapshot()["state"])

    def run(self) -> None:
        """Check every `wan.check_interval_s` until told to stop."""
        store = self._store_factory()
        next_check = time.monotonic()
        try:
            while not self._halt.wait(max(0.0, min(TICK_S, next_check - time.monotonic()))):
                self.heartbeat = time.monotonic()
                if time.monotonic() < next_check:
                    continue
                next_check = time.monotonic() + self.config.wan.check_interval_s
                try:
                    self.check(store)
                except (HesError, OSError) as exc:
                    log.error("WAN health: %s", exc)
        finally:
            store.close()
            if self.modem is not None:
                self.modem.close()

    def check(self, store: Store) -> None:
        """One look at the modem and the data path, and what the ladder makes of it."""
        now = time.monotonic()
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            if not self.link.connected.is_set():
                self.link.reconnect("the modem is back")
        self.modem_status = self._look_at_modem(now)
        self._ping()
        up = self.link.connected.is_set() and self.ping_failures < PING_FAILURES_DOWN
        blocker = self.modem_status.blocker if self.modem_status else None
        if self.link.waiting:  # no certificate yet: no reset of the modem can cure that
            blocker = f"waiting for the broker's TLS files ({self.link.waiting})"
        step = self.ladder.observe(now, up, blocker)
        self._raise_alarms(store, step, blocker)
        if step.action is not None:
            self._climb(store, step.action)
        self._publish_snapshot(up, blocker)

    def _look_at_modem(self, now: float) -> ModemStatus | None:
        if self.modem is None:
            return None
        try:
            status = self.modem.status()
        except HesError as exc:  # the port is gone: a USB modem that is off or rebooting
            log.debug("%s", exc)
            status = ModemStatus(responding=False)
        if not status.responding and not self._modem_silent_logged:
            log.warning("modem on %s does not answer AT", self.modem.spec.device)
        elif status.responding and self._modem_silent_logged:
            log.info("modem answers again")
        self._modem_silent_logged = not status.responding
        if self._power_check_at is not None and now >= self._power_check_at:
            self._power_check_at = None
            if not status.responding:
                log.warning("modem silent: pressing its power key")
                self.modem.press_power_key()
        return status

    def _ping(self) -> None:
        """The data path's round trip: a QoS 1 publish and its PUBACK (the heartbeat beats meanwhile)."""
        info = self.link.ping()
        if info is None:
            self.rtt_s, self.ping_failures = None, 0
            return
        sent = time.monotonic()
        deadline = sent + self.config.wan.ping_timeout_s
        while not info.is_published() and time.monotonic() < deadline and not self._halt.is_set():
            self.heartbeat = time.monotonic()
            time.sleep(0.01)
        if info.is_published():
            self.rtt_s, self.ping_failures = time.monotonic() - sent, 0
        elif not self._halt.is_set():  # stopping is no failure of the link
            self.rtt_s = None
            self.ping_failures += 1
            log.warning(
                "WAN ping: no PUBACK within %g s (%d in a row)",
                self.config.wan.ping_timeout_s,
                self.ping_failures,
            )

    def _raise_alarms(self, store: Store, step: Step, blocker: str | None) -> None:
        now = self.clock.now()
        hes_id = self.config.hes.id
        if step.lost:
            assert self.ladder.down_since is not None
            since = now - timedelta(seconds=time.monotonic() - self.ladder.down_since)
            why = blocker or (
                "MQTT connected but pings unanswered" if self.link.connected.is_set() else "MQTT disconnected"
            )
            log.error("WAN link lost since %s: %s", format_time(since), why)
            details = {"cause": why, **self._modem_details()}
            self._alarm(store, wan_alarm(hes_id, WAN_LOST, since, f"WAN link lost: {why}", "major", details))
        if step.restored_after_s is not None:
            log.info("WAN link restored after %.0f s", step.restored_after_s)
            details = {
                "outageSeconds": round(step.restored_after_s),
                "recovery": ", ".join(rung.value for rung in step.rungs) or None,
                "reconnects": self.link.reconnects,
            }
            self._alarm(store, wan_alarm(hes_id, WAN_RESTORED, now, "WAN link restored", "info", details))
        if step.capped:
            cap = self.config.wan.max_resets_per_day
            log.error("WAN recovery: %d modem resets in 24 h used up; only reconnects until then", cap)
            details = {"resetsIn24h": cap, **self._modem_details()}
            self._alarm(
                store,
                wan_alarm(
                    hes_id, RECOVERY_CAPPED, now, "WAN recovery: reset cap reached", "critical", details
                ),
            )

    def _modem_details(self) -> dict[str, Any]:
        status = self.modem_status
        if status is None:
            return {}
        view = status.as_dict()
        return {
            "modemResponding": view["responding"],
            "sim": view["sim"],
            "csq": view["csq"],
            "registered": view["registered"],
            "operator": view["operator"],
        }

    def _alarm(self, store: Store, event: Event) -> None:
        """Store the alarm as an outbox message: it leaves with the next connection, alarms first."""
        with store.transaction() as conn:
            enqueue_alarm(conn, self.config, self.clock, event)

    def _climb(self, store: Store, rung: Rung) -> None:
        log.warning("WAN recovery: %s", rung.value)
        self.last_action = (self.clock.now(), rung.value)
        if rung is Rung.RECONNECT:
            self.link.reconnect("WAN recovery")
        elif rung is Rung.REATTACH:
            self._run_attach_command()
            self.link.reconnect("data re-attached")
        elif self.modem is not None:
            try:
                if rung is Rung.MODEM_RESET:
                    method = self.modem.reset()
                else:
                    self.modem.power_cycle()
                    method = "power cycle"
            except HesError as exc:
                log.error("WAN recovery: could not %s: %s", rung.value, exc)
                return
            if rung is Rung.POWER_CYCLE and self.modem.spec.power_kind == "pwrkey":
                self._power_check_at = time.monotonic() + self.modem.spec.boot_s
            self._reconnect_at = time.monotonic() + self.modem.spec.boot_s
            self._alarm(
                store,
                wan_alarm(
                    self.config.hes.id,
                    MODEM_RESET,
                    self.clock.now(),
                    f"modem reset by WAN recovery ({method})",
                    "minor",
                    {"method": method, "resetsIn24h": self.ladder.resets_in_day(time.monotonic())},
                ),
            )

    def _run_attach_command(self) -> None:
        """The re-attach hook, without a shell, its output to the log; killed after attach_timeout_s."""
        wan = self.config.wan
        environment = {**os.environ, "HES_APN": self.config.modem.apn}
        try:
            process = subprocess.Popen(
                shlex.split(wan.attach_command),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        except OSError as exc:
            log.error("WAN re-attach: cannot run %r: %s", wan.attach_command, exc)
            return
        deadline = time.monotonic() + wan.attach_timeout_s
        while process.poll() is None and time.monotonic() < deadline:
            self.heartbeat = time.monotonic()
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            log.error("WAN re-attach: %r killed after %g s", wan.attach_command, wan.attach_timeout_s)
        output = process.communicate()[0].decode(errors="replace").strip()
        last = output.splitlines()[-1] if output else ""
        log.log(
            logging.INFO if process.returncode == 0 else logging.ERROR,
            "WAN re-attach: %r exited %s%s",
            wan.attach_command,
            process.returncode,
            f": {last}" if last else "",
        )

    def _wan_state(self, up: bool, blocker: str | None) -> WanState:
        if up:
            return WanState.UP
        silent = self.modem_status is not None and not self.modem_status.responding and self.ladder.declared
        if blocker or self.ladder.capped or silent:
            return WanState.DOWN
        return WanState.CONNECTING

    def _publish_snapshot(self, up: bool, blocker: str | None) -> None:
        now = time.monotonic()
        counters = interface_bytes(self.config.wan.interface)
        identity = self.modem.identity if self.modem is not None else None
        modem: dict[str, Any] | None = None
        if self.modem_status is not None:
            modem = self.modem_status.as_dict() | {
                "manufacturer": identity.manufacturer if identity else None,
                "model": identity.model if identity else None,
                "imei": identity.imei if identity else None,
                "imsi": identity.imsi if identity else None,
                "iccid": identity.iccid if identity else None,
            }
        down_since = self.ladder.down_since
        snapshot = {
            "state": self._wan_state(up, blocker).value,
            "problem": blocker,
            "modem": modem,
            "mqtt": {
                "connected": self.link.connected.is_set(),
                "reconnects": self.link.reconnects,
                "rtt_ms": round(self.rtt_s * 1000) if self.rtt_s is not None else None,
                "ping_failures": self.ping_failures,
            },
            "bytes": {
                "interface": self.config.wan.interface or None,
                "received": counters[0] if counters else None,
                "sent": counters[1] if counters else None,
            },
            "recovery": {
                "down_s": round(now - down_since) if down_since is not None else 0,
                "rungs_taken": [rung.value for rung in self.ladder.taken],
                "resets_24h": self.ladder.resets_in_day(now),
                "capped": self.ladder.capped,
                "last_action": (
                    {"time": format_time(self.last_action[0]), "action": self.last_action[1]}
                    if self.last_action
                    else None
                ),
            },
        }
        with self._lock:
            self._snapshot = snapshot
