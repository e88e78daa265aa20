"""GPIO output lines (LEDs, the modem's power and reset): one thin driver, and a fake for tests.

On the appliance the `RPi.GPIO` API comes from rpi-lgpio (the `pi` extra), which talks to
/dev/gpiochip* (the unit's `ProcSubset=pid` hides /proc/cpuinfo, which the classic RPi.GPIO needs).
It is imported only when a real backend is asked for, so nothing here needs a Pi to import.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import DeviceError


class Gpio(Protocol):
    """Output lines by BCM number."""

    def setup_output(self, pin: int, initial: bool = False) -> None:
        """Make `pin` an output, driven to `initial`."""

    def write(self, pin: int, value: bool) -> None:
        """Drive `pin` high (True) or low."""

    def close(self) -> None:
        """Release every line (they float back to their pull default)."""


class FakeGpio:
    """Records every level change with a monotonic time stamp; what the tests look at."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.levels: dict[int, bool] = {}
        self.history: list[tuple[float, int, bool]] = []

    def setup_output(self, pin: int, initial: bool = False) -> None:
        """Make `pin` an output, driven to `initial`."""
        with self._lock:
            self.levels[pin] = initial
            self.history.append((time.monotonic(), pin, initial))

    def write(self, pin: int, value: bool) -> None:
        """Drive `pin`; writing an unset-up pin is the same bug it is on a Pi."""
        with self._lock:
            if pin not in self.levels:
                raise DeviceError(f"GPIO {pin} written before it was set up as an output")
            if self.levels[pin] != value:
                self.levels[pin] = value
                self.history.append((time.monotonic(), pin, value))

    def changes(self, pin: int) -> list[tuple[float, bool]]:
        """The level changes of one pin, oldest first."""
        with self._lock:
            return [(t, v) for t, p, v in self.history if p == pin]

    def close(self) -> None:
        """Nothing to release."""


DEVICE_TREE_REVISION = Path("/sys/firmware/devicetree/base/system/linux,revision")


def export_board_revision(source: Path = DEVICE_TREE_REVISION) -> None:
    """rpi-lgpio reads the board revision from /proc/device-tree at import, which the unit's
    `ProcSubset=pid` hides: hand it the same bytes from sysfs in RPI_LGPIO_REVISION, its override."""
    if "RPI_LGPIO_REVISION" in os.environ:
        return
    try:
        revision = source.read_bytes()[:4]
    except OSError:
        return  # not a Pi: the import says so
    if len(revision) == 4 and any(revision):
        os.environ["RPI_LGPIO_REVISION"] = revision.hex()


class RpiGpio:
    """The RPi.GPIO API (rpi-lgpio on the appliance), BCM numbering. lgpio makes its notification pipe
    in the working directory (/data/hes under hes.service), so that must be writable."""

    def __init__(self) -> None:
        export_board_revision()
        try:
            import RPi.GPIO as gpio  # noqa: PLC0415 - only on a Pi
        except (ImportError, RuntimeError, OSError) as exc:  # OSError: lgpio's pipe in the cwd
            raise DeviceError(
                f"GPIO unavailable ({exc}): install the pi extra (rpi-lgpio), or use backend 'fake'"
            ) from exc
        self._gpio: Any = gpio
        self._pins: set[int] = set()
        gpio.setwarnings(False)
        gpio.setmode(gpio.BCM)

    def setup_output(self, pin: int, initial: bool = False) -> None:
        """Make `pin` an output, driven to `initial`."""
        self._gpio.setup(pin, self._gpio.OUT, initial=self._gpio.HIGH if initial else self._gpio.LOW)
        self._pins.add(pin)

    def write(self, pin: int, value: bool) -> None:
        """Drive `pin` high (True) or low."""
        self._gpio.output(pin, self._gpio.HIGH if value else self._gpio.LOW)

    def close(self) -> None:
        """Release the lines this driver set up; the LED panel and the modem each have one driver,
        and closing one must not let the other's lines float."""
        if self._pins:
            self._gpio.cleanup(sorted(self._pins))
            self._pins.clear()


def open_gpio(backend: str) -> Gpio:
    """`rpi` on the appliance, `fake` anywhere else (the demo and the tests)."""
    if backend == "rpi":
        return RpiGpio()
    if backend == "fake":
        return FakeGpio()
    raise DeviceError(f"unknown GPIO backend {backend!r} (expected 'rpi' or 'fake')")
