"""The GPS receiver, through gpsd: a reader that wraps gpsd-py3, and the thread that feeds the clock.

gpsd-py3 keeps its one connection in module globals, raises UserWarning('GPS not active') until the
receiver has sent something, and bare Exceptions on replies it did not expect. `GpsdReader` is the
only user of it in the process and turns all of that into a `GpsFix` or a typed error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import gpsd

from appliance.clock import Clock, ClockState, change_event, step_event, step_system_clock
from appliance.config import Config
from appliance.errors import ClockError, ProtocolError, StoreError, TransportError
from appliance.model import Event
from appliance.store import Store
from appliance.uplink.messages import enqueue_alarm

log = logging.getLogger(__name__)

POLL_S = 0.25  # how often gpsd is asked: a new fix is seen at most this late
REPLY_TIMEOUT_S = 2.0  # gpsd answers a poll at once; silence this long means it hangs
RECONNECT_MAX_S = 16.0  # reconnect backoff doubles from 1 s up to this


@dataclass(frozen=True)
class GpsFix:
    """What gpsd knows now. `mode` is gpsd's: 0 no data yet, 1 no fix, 2 2D fix, 3 3D fix; `time`
    (UTC) and the position only come with a fix."""

    mode: int
    time: datetime | None = None
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None


class GpsdReader:
    """One gpsd connection through gpsd-py3, opened on first use and again after any failure."""

    _module_lock = threading.Lock()  # gpsd-py3's connection is module state: one user at a time

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._connected = False

    def read(self) -> GpsFix:
        """gpsd's current fix; TransportError when gpsd cannot be reached, ProtocolError when it
        answers something unexpected (either way the next read connects afresh)."""
        with self._module_lock:
            try:
                if not self._connected:
                    gpsd.connect(self.host, self.port)
                    # gpsd-py3 takes no timeout; a socket timeout keeps a hung gpsd from hanging us.
                    gpsd.gpsd_socket.settimeout(REPLY_TIMEOUT_S)
                    self._connected = True
                return _fix(gpsd.get_current())
            except UserWarning:
                return GpsFix(mode=0)  # gpsd has heard nothing from the receiver yet
            except OSError as exc:
                self._disconnect()
                raise TransportError(f"gpsd at {self.host}:{self.port}: {exc}") from exc
            except json.JSONDecodeError as exc:
                self._disconnect()
                if not exc.doc:  # an empty line: gpsd closed the connection
                    raise TransportError(f"gpsd at {self.host}:{self.port} closed the connection") from exc
                raise ProtocolError(f"gpsd at {self.host}:{self.port} sent no JSON: {exc}") from exc
            except Exception as exc:  # gpsd-py3 raises bare Exception (and KeyError, ...) for odd replies
                self._disconnect()
                raise ProtocolError(
                    f"gpsd at {self.host}:{self.port} answered unexpectedly: {exc!r}"
                ) from exc

    def close(self) -> None:
        """Drop the connection (gpsd stops watching for us)."""
        with self._module_lock:
            self._disconnect()

    def _disconnect(self) -> None:
        for stream in (gpsd.gpsd_stream, gpsd.gpsd_socket):
            if stream is not None:
                try:
                    stream.close()
                except OSError as exc:
                    log.debug("closing the gpsd connection: %s", exc)
        gpsd.gpsd_stream = gpsd.gpsd_socket = None
        self._connected = False


def _fix(response: gpsd.GpsResponse) -> GpsFix:
    """gpsd-py3's answer as a GpsFix; its time is naive UTC to the millisecond."""
    if response.mode < 2:
        return GpsFix(mode=response.mode)
    return GpsFix(
        mode=response.mode,
        time=response.get_time().replace(tzinfo=UTC),
        lat=response.lat,
        lon=response.lon,
        alt=response.alt if response.mode >= 3 else None,
    )


class GpsWatcher(threading.Thread):
    """Reads gpsd a few times a second, feeds the clock, sends the clock's state changes to the MDM
    as alarms, and steps the system clock when this box disciplines it itself (discipline = daemon)."""

    def __init__(
        self, config: Config, clock: Clock, store_factory: Callable[[], Store], stop: threading.Event
    ) -> None:
        super().__init__(name="gps", daemon=True)
        self.config, self.clock, self._store_factory, self._halt = config, clock, store_factory, stop
        self.reader = GpsdReader(config.clock.gpsd_host, config.clock.gpsd_port)
        self.heartbeat = time.monotonic()
        self._may_step = config.clock.discipline == "daemon"

    def run(self) -> None:
        """Watch until told to stop."""
        store = self._store_factory()
        retry_at, backoff, failing = 0.0, 1.0, False
        try:
            while not self._halt.is_set():
                self.heartbeat = time.monotonic()
                fix = None
                if self.heartbeat >= retry_at:
                    try:
                        fix = self.reader.read()
                        if failing:
                            log.info("gpsd at %s:%d answers again", self.reader.host, self.reader.port)
                        backoff, failing = 1.0, False
                    except (TransportError, ProtocolError) as exc:
                        if not failing:
                            log.warning("%s; retrying (the clock holds over meanwhile)", exc)
                        retry_at, backoff, failing = (
                            self.heartbeat + backoff,
                            min(backoff * 2, RECONNECT_MAX_S),
                            True,
                        )
                change = self.clock.observe(fix, time.time(), time.monotonic())
                if change is not None:
                    level = logging.INFO if change.state is ClockState.LOCKED else logging.WARNING
                    log.log(level, "clock %s -> %s: %s", change.previous, change.state, change.reason)
                    self._send(store, change_event(self.config.hes.id, change, self.clock.now()))
                self._discipline(store)
                self._halt.wait(POLL_S)
        finally:
            self.reader.close()
            store.close()

    def _discipline(self, store: Store) -> None:
        """Step the system clock when the clock says so and this box may (discipline = daemon)."""
        correction = self.clock.step_correction() if self._may_step else None
        if correction is None:
            return
        try:
            step_system_clock(correction)
        except ClockError as exc:
            self._may_step = False  # capabilities do not come back while we run
            log.error("%s; not trying again (give hes.service CAP_SYS_TIME, or use chrony)", exc)
            return
        self.clock.stepped()
        log.warning("system clock stepped by %+.3f s to GPS time", correction)
        self._send(store, step_event(self.config.hes.id, correction, self.clock.now()))

    def _send(self, store: Store, event: Event) -> None:
        """Put an alarm in the outbox; the pump sends it at alarm priority."""
        try:
            with store.transaction() as conn:
                enqueue_alarm(conn, self.config, self.clock, event)
        except StoreError as exc:
            log.error("clock alarm %s (%s) not stored: %s", event.event_type, event.reason, exc)
