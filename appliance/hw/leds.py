"""The LED panel: five LEDs, one vocabulary of patterns, one thread that drives the pins.

Only the panel's thread writes the pins (one owner per resource); everybody else says what an LED
should show (`show`), reports activity (`flash`) or proves it is alive (`beat`). The power LED
blinks only while the daemon's main loop keeps calling `beat()`: when the main loop hangs, the LED
freezes on or off, which a technician can see from the cabinet door. What each state means to the
technician is decided in `appliance/panel.py`; this module only knows how a pattern looks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from enum import StrEnum

from appliance.config import LedsSection
from appliance.errors import DeviceError
from appliance.hw.gpio import FakeGpio, Gpio, open_gpio

log = logging.getLogger(__name__)


class Led(StrEnum):
    """The five LEDs, in the order they sit on the panel."""

    POWER = "power"
    WAN = "wan"
    GPS = "gps"
    RS485 = "rs485"
    FAULT = "fault"


class Pattern(StrEnum):
    """Everything an LED can show."""

    OFF = "off"
    SLOW = "slow"  # 1 Hz, half on, half off
    FAST = "fast"  # 4 Hz
    SOLID = "solid"
    FLASH = "flash"  # dark, lit for 50 ms on each activity


SLOW_PERIOD_S = 1.0
FAST_PERIOD_S = 0.25
FLASH_S = 0.05
# The main loop beats at least once a second; three seconds without a beat is a hang.
BEAT_STALE_S = 3.0
# Self test: each LED alone in panel order, then all of them together.
TEST_STEP_S = 0.5
TEST_ALL_S = 1.0
TEST_S = TEST_STEP_S * len(Led) + TEST_ALL_S
_HALF_PERIOD = {Pattern.SLOW: SLOW_PERIOD_S / 2, Pattern.FAST: FAST_PERIOD_S / 2}


def level(pattern: Pattern, t: float, flash_until: float = 0.0) -> bool:
    """Whether an LED showing `pattern` is lit at `t` (seconds on the panel's clock).

    Blinking LEDs share one clock, so two LEDs blinking at 1 Hz blink together.
    """
    if pattern in _HALF_PERIOD:
        return math.floor(t / _HALF_PERIOD[pattern]) % 2 == 0
    if pattern is Pattern.FLASH:
        return t < flash_until
    return pattern is Pattern.SOLID


def next_edge(pattern: Pattern, t: float, flash_until: float = 0.0) -> float:
    """The first time after `t` at which the LED's level may change (inf: it stays as it is)."""
    if pattern in _HALF_PERIOD:
        half = _HALF_PERIOD[pattern]
        return (math.floor(t / half) + 1) * half
    if pattern is Pattern.FLASH and t < flash_until:
        return flash_until
    return math.inf


class LedPanel:
    """Drives five GPIO lines from patterns, on a thread of its own."""

    def __init__(self, gpio: Gpio, pins: Mapping[Led, int]) -> None:
        self._gpio, self._pins = gpio, dict(pins)
        for led in Led:
            gpio.setup_output(self._pins[led], False)
        self._wake = threading.Condition()
        self._epoch = time.monotonic()
        self._patterns = dict.fromkeys(Led, Pattern.OFF)
        self._flash_until = dict.fromkeys(Led, 0.0)
        self._levels = dict.fromkeys(Led, False)
        self._last_beat: float | None = None
        self._test_start: float | None = None
        self._changed = self._closing = self._write_failed = False
        self._thread = threading.Thread(target=self._run, name="leds", daemon=True)

    def start(self) -> LedPanel:
        """Start driving the pins; until the first beat the power LED is lit steadily (starting up)."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, darken the panel and release the lines."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self._drive(dict.fromkeys(Led, False))
        self._gpio.close()

    def beat(self) -> None:
        """The main loop is alive: keep the power LED blinking for another BEAT_STALE_S."""
        with self._wake:
            self._last_beat = self._now()
            self._changed = True
            self._wake.notify()

    def flash(self, led: Led) -> None:
        """Activity: light `led` for FLASH_S if it shows FLASH (a flash while lit is absorbed).

        Cheap enough for every request on a bus: it wakes the thread only when a flash begins.
        """
        with self._wake:
            t = self._now()
            if self._patterns[led] is Pattern.FLASH and t >= self._flash_until[led]:
                self._flash_until[led] = t + FLASH_S
                self._changed = True
                self._wake.notify()

    def show(self, patterns: Mapping[Led, Pattern]) -> None:
        """Set the patterns of the LEDs named; the power LED belongs to `beat()`."""
        if Led.POWER in patterns:
            raise ValueError("the power LED shows the heartbeat; call beat(), not show()")
        with self._wake:
            self._patterns.update(patterns)
            self._changed = True
            self._wake.notify()

    def patterns(self) -> dict[Led, Pattern]:
        """What each LED shows now (power: SOLID while starting, then SLOW, the heartbeat)."""
        with self._wake:
            power = Pattern.SOLID if self._last_beat is None else Pattern.SLOW
            return {Led.POWER: power} | {led: p for led, p in self._patterns.items() if led is not Led.POWER}

    def self_test(self) -> str:
        """Light each LED alone in panel order, then all together; returns what to watch for.

        Returns at once (the console shows the text while the panel's thread runs the test); then
        the LEDs go back to their patterns.
        """
        with self._wake:
            self._test_start = self._now()
            self._changed = True
            self._wake.notify()
        return (
            f"LED test, {TEST_S:g} s: {', '.join(Led)} light one at a time for {TEST_STEP_S:g} s each,"
            f" then all five together for {TEST_ALL_S:g} s. An LED that stays dark is broken or miswired."
        )

    def _now(self) -> float:
        return time.monotonic() - self._epoch

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._closing:
                    return
                now = self._now()
                levels, wake = self._frame(now)
                self._changed = False
            self._drive(levels)
            with self._wake:
                timeout = None if wake == math.inf else max(0.0, wake - self._now())
                self._wake.wait_for(lambda: self._changed or self._closing, timeout)

    def _frame(self, t: float) -> tuple[dict[Led, bool], float]:
        """The level of every LED at `t` and when the next change is due (caller holds the lock)."""
        if self._test_start is not None and t < self._test_start + TEST_S:
            step = int((t - self._test_start) // TEST_STEP_S)
            levels = {led: step >= len(Led) or step == index for index, led in enumerate(Led)}
            wake = self._test_start + min((step + 1) * TEST_STEP_S, TEST_S)
            return levels, wake
        levels, wake = {}, math.inf
        for led in Led:
            pattern, flash_until = self._patterns[led], self._flash_until[led]
            if led is Led.POWER:
                if self._last_beat is None:
                    levels[led] = True
                    continue
                if t - self._last_beat > BEAT_STALE_S:
                    levels[led] = self._levels[led]  # frozen: the main loop stopped beating
                    continue
                pattern = Pattern.SLOW
            levels[led] = level(pattern, t, flash_until)
            wake = min(wake, next_edge(pattern, t, flash_until))
        return levels, wake

    def _drive(self, levels: Mapping[Led, bool]) -> None:
        for led, lit in levels.items():
            if self._levels[led] == lit:
                continue
            self._levels[led] = lit
            try:
                self._gpio.write(self._pins[led], lit)
            except (DeviceError, OSError, RuntimeError) as exc:
                if not self._write_failed:  # one line, not one per blink
                    log.warning("LED panel: GPIO %d cannot be driven: %s", self._pins[led], exc)
                    self._write_failed = True


def open_panel(section: LedsSection) -> LedPanel:
    """The configured panel, started. A panel that cannot be driven stays dark with one warning.

    The LEDs are never worth stopping collection for, so a missing GPIO library or a busy line
    falls back to a fake backend: the patterns still reach the status document.
    """
    pins = {
        Led.POWER: section.power_pin,
        Led.WAN: section.wan_pin,
        Led.GPS: section.gps_pin,
        Led.RS485: section.rs485_pin,
        Led.FAULT: section.fault_pin,
    }
    if section.enabled:
        try:
            return LedPanel(open_gpio(section.gpio), pins).start()
        except (DeviceError, OSError, RuntimeError) as exc:
            log.warning("LED panel stays dark: %s", exc)
    return LedPanel(FakeGpio(), pins).start()


_LABELS = {Led.POWER: "PWR", Led.WAN: "WAN", Led.GPS: "GPS", Led.RS485: "485", Led.FAULT: "FLT"}
_COLOURS = {Led.POWER: "32", Led.WAN: "32", Led.GPS: "32", Led.RS485: "33", Led.FAULT: "31"}
_WORDS = {
    Pattern.OFF: "off",
    Pattern.SLOW: "1Hz",
    Pattern.FAST: "4Hz",
    Pattern.SOLID: "on",
    Pattern.FLASH: "act",
}


def render(patterns: Mapping[Led, Pattern | str], colour: bool = True) -> str:
    """The panel as one terminal line, e.g. `● PWR 1Hz  ● WAN on  ○ GPS off  ● 485 act  ○ FLT off`.

    A lit LED is a filled dot in its colour (green, yellow for RS-485, red for fault); a dark one a
    grey ring. Accepts the pattern names of a status document as well as Patterns.
    """
    cells = []
    for led in Led:
        pattern = Pattern(patterns.get(led, Pattern.OFF))
        lit = pattern is not Pattern.OFF
        cell = f"{'●' if lit else '○'} {_LABELS[led]} {_WORDS[pattern]}"
        if colour:
            cell = f"\033[1;{_COLOURS[led]}m{cell}\033[0m" if lit else f"\033[2m{cell}\033[0m"
        cells.append(cell)
    return "  ".join(cells)
