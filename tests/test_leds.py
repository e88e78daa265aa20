"""The LED panel's pattern engine, driving the recording fake GPIO (the one in-process fake allowed)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.hw import leds
from appliance.hw.gpio import FakeGpio, export_board_revision
from appliance.hw.leds import TEST_S, Led, LedPanel, Pattern, level, next_edge, open_panel, render
from appliance.sim.substation import Substation
from tests.conftest import write_config

PINS = {Led.POWER: 16, Led.WAN: 20, Led.GPS: 21, Led.RS485: 26, Led.FAULT: 19}
NO_TLS = "[mqtt]\ntls = false\n"


@pytest.fixture
def gpio() -> FakeGpio:
    return FakeGpio()


@pytest.fixture
def panel(gpio: FakeGpio) -> Iterator[LedPanel]:
    started = LedPanel(gpio, PINS).start()
    yield started
    started.close()


def rises(gpio: FakeGpio, led: Led, since: float = 0.0) -> list[float]:
    """When `led` went on (after `since`)."""
    return [t for t, lit in gpio.changes(PINS[led]) if lit and t >= since]


@pytest.mark.parametrize(
    ("pattern", "lit_at", "dark_at"),
    [
        (Pattern.SLOW, [0.0, 0.49, 1.0, 1.2], [0.5, 0.99, 1.5]),
        (Pattern.FAST, [0.0, 0.12, 0.25, 0.3], [0.125, 0.2, 0.375]),
        (Pattern.SOLID, [0.0, 0.5, 7.3], []),
        (Pattern.OFF, [], [0.0, 0.5, 7.3]),
    ],
)
def test_each_pattern_is_lit_when_it_should_be(pattern: Pattern, lit_at: list, dark_at: list) -> None:
    assert [level(pattern, t) for t in lit_at] == [True] * len(lit_at)
    assert [level(pattern, t) for t in dark_at] == [False] * len(dark_at)


def test_a_flash_lights_for_its_time_only() -> None:
    assert level(Pattern.FLASH, 10.0, flash_until=10.05)
    assert not level(Pattern.FLASH, 10.05, flash_until=10.05)
    assert not level(Pattern.FLASH, 10.0)  # no activity: dark
    assert next_edge(Pattern.FLASH, 10.0, flash_until=10.05) == 10.05
    assert next_edge(Pattern.FLASH, 10.1, flash_until=10.05) == float("inf")


@pytest.mark.parametrize(
    ("pattern", "t", "edge"),
    [
        (Pattern.SLOW, 0.0, 0.5),
        (Pattern.SLOW, 0.5, 1.0),
        (Pattern.SLOW, 1.7, 2.0),
        (Pattern.FAST, 0.3, 0.375),
    ],
)
def test_the_next_edge_is_strictly_later(pattern: Pattern, t: float, edge: float) -> None:
    assert next_edge(pattern, t) == pytest.approx(edge)
    assert next_edge(Pattern.SOLID, t) == next_edge(Pattern.OFF, t) == float("inf")


def test_blinking_follows_the_pattern_on_the_pins(gpio: FakeGpio, panel: LedPanel) -> None:
    panel.show({Led.WAN: Pattern.SLOW, Led.GPS: Pattern.FAST, Led.FAULT: Pattern.SOLID})
    time.sleep(2.2)
    slow, fast = rises(gpio, Led.WAN), rises(gpio, Led.GPS)
    assert 2 <= len(slow) <= 3
    assert all(0.8 < b - a < 1.2 for a, b in itertools.pairwise(slow))
    assert 6 <= len(fast) <= 10  # 4 Hz for ~2 s, generous for a loaded machine
    assert [lit for _, lit in gpio.changes(PINS[Led.FAULT])] == [False, True]  # set up dark, then solid
    assert gpio.changes(PINS[Led.RS485]) == gpio.changes(PINS[Led.RS485])[:1]  # OFF: never lit


def test_power_is_steady_while_starting_then_beats(gpio: FakeGpio, panel: LedPanel) -> None:
    time.sleep(0.3)
    assert gpio.levels[PINS[Led.POWER]] is True
    assert panel.patterns()[Led.POWER] is Pattern.SOLID
    for _ in range(6):
        panel.beat()
        time.sleep(0.3)
    assert len(rises(gpio, Led.POWER)) >= 2  # the starting light, then at least one more blink
    assert panel.patterns()[Led.POWER] is Pattern.SLOW


def test_power_freezes_when_the_main_loop_stops_beating(
    gpio: FakeGpio, panel: LedPanel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leds, "BEAT_STALE_S", 0.6)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # a healthy main loop
        panel.beat()
        time.sleep(0.1)
    assert len(gpio.changes(PINS[Led.POWER])) >= 3
    time.sleep(1.2)  # the loop hangs: within BEAT_STALE_S plus one edge the LED stops
    frozen_at = time.monotonic()
    time.sleep(1.5)
    assert [t for t, _ in gpio.changes(PINS[Led.POWER]) if t > frozen_at] == []
    panel.beat()  # the loop comes back: so does the blinking
    for _ in range(12):
        panel.beat()
        time.sleep(0.1)
    assert [t for t, _ in gpio.changes(PINS[Led.POWER]) if t > frozen_at]


def test_activity_flashes_for_50_ms_and_a_flash_while_lit_is_absorbed(
    gpio: FakeGpio, panel: LedPanel
) -> None:
    panel.flash(Led.RS485)  # not showing FLASH yet: ignored
    time.sleep(0.1)
    assert rises(gpio, Led.RS485) == []
    panel.show({Led.RS485: Pattern.FLASH})
    start = time.monotonic()
    for _ in range(3):
        panel.flash(Led.RS485)
    time.sleep(0.3)
    changes = [(t, lit) for t, lit in gpio.changes(PINS[Led.RS485]) if t >= start]
    assert [lit for _, lit in changes] == [True, False]
    assert 0.04 <= changes[1][0] - changes[0][0] < 0.5  # 50 ms, and a loaded machine's late wake-up
    panel.flash(Led.RS485)
    time.sleep(0.2)
    assert len(rises(gpio, Led.RS485)) == 2


def lit_at(gpio: FakeGpio, moment: float) -> set[Led]:
    """The LEDs that were lit at `moment`, replayed from the pin history."""
    levels: dict[int, bool] = {}
    for t, pin, value in gpio.history:
        if t <= moment:
            levels[pin] = value
    return {led for led, pin in PINS.items() if levels.get(pin)}


def test_self_test_lights_each_led_in_turn_then_all_then_goes_back(gpio: FakeGpio, panel: LedPanel) -> None:
    panel.show({Led.WAN: Pattern.SOLID})
    time.sleep(0.1)
    start = time.monotonic()
    text = panel.self_test()
    assert "power, wan, gps, rs485, fault" in text
    time.sleep(TEST_S + 0.5)
    middles = [start + leds.TEST_STEP_S * (step + 0.5) for step in range(len(Led))]
    assert [lit_at(gpio, t) for t in middles] == [{led} for led in Led]
    assert lit_at(gpio, start + TEST_S - leds.TEST_ALL_S / 2) == set(Led)
    # Afterwards the LEDs show their patterns again: WAN solid, power steady (no beat yet).
    assert lit_at(gpio, time.monotonic()) == {Led.POWER, Led.WAN}


def test_the_power_led_belongs_to_the_heartbeat(panel: LedPanel) -> None:
    with pytest.raises(ValueError, match="beat"):
        panel.show({Led.POWER: Pattern.SOLID})


def test_close_darkens_the_panel_and_stops_the_thread(gpio: FakeGpio) -> None:
    panel = LedPanel(gpio, PINS).start()
    panel.show({Led.WAN: Pattern.SOLID, Led.FAULT: Pattern.FAST})
    time.sleep(0.2)
    panel.close()
    assert not any(gpio.levels.values())
    count = len(gpio.history)
    time.sleep(0.4)
    assert len(gpio.history) == count


def test_a_panel_that_cannot_be_driven_stays_dark_and_the_daemon_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(write_config(tmp_path / "box.toml", NO_TLS))  # gpio = "rpi", not a Pi here
    with caplog.at_level(logging.WARNING, logger="appliance.hw.leds"):
        panel = open_panel(config.leds)
    try:
        assert [r.getMessage() for r in caplog.records] == [
            "LED panel stays dark: GPIO unavailable (No module named 'RPi'): install the pi extra"
            " (rpi-lgpio), or use backend 'fake'"
        ]
        panel.show({Led.GPS: Pattern.SOLID})
        assert panel.patterns()[Led.GPS] is Pattern.SOLID  # still known for the status document
    finally:
        panel.close()


def test_a_disabled_panel_is_quiet(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_config(write_config(tmp_path / "box.toml", NO_TLS + "[leds]\nenabled = false\n"))
    with caplog.at_level(logging.WARNING):
        open_panel(config.leds).close()
    assert caplog.records == []


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('gpio = "sysfs"', "leds.gpio", "rpi or fake"),
        ("gps_pin = 28", "leds.gps_pin", "0-27"),
        ("fault_pin = 16", "leds.fault_pin", "16 is taken"),
        ("wan_pin = 5\n[modem]\nenabled = true\npower_pin = 5", "leds.wan_pin", "the modem's"),
    ],
)
def test_led_config_errors_name_the_key(tmp_path: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as caught:
        load_config(write_config(tmp_path / "box.toml", NO_TLS + "[leds]\n" + text + "\n"))
    assert caught.value.key == key


def test_the_demo_line_shows_every_led() -> None:
    document_leds = {"power": "slow", "wan": "solid", "gps": "off", "rs485": "flash", "fault": "fast"}
    assert render(document_leds, colour=False) == "● PWR 1Hz  ● WAN on  ○ GPS off  ● 485 act  ● FLT 4Hz"
    coloured = render(document_leds)
    assert "\033[1;31m● FLT 4Hz\033[0m" in coloured  # fault in red
    assert "\033[2m○ GPS off\033[0m" in coloured  # a dark LED is dim


DAEMON_CONFIG = """
[hes]
id = "hes-leds"

[uplink]
status_interval_s = 1

[wan]
check_interval_s = 1

[leds]
gpio = "fake"

[meter_defaults]
poll_interval_s = 1

[[meters]]
id = "LED-A1"
bus = "A"
address = 1
model = "sdm630"
"""


def test_the_daemon_shows_its_panel_in_the_status(tmp_path: Path) -> None:
    config = write_config(tmp_path / "hes.toml", DAEMON_CONFIG)
    with Substation(tmp_path / "run", config) as substation, substation.mdm() as mdm:
        substation.start_daemon()

        def panel() -> dict:
            return json.loads(mdm.status or b"{}").get("leds", {})

        assert substation.wait_for(lambda: panel().get("wan") == "solid", 20), panel()
        assert {led: panel()[led] for led in ("power", "rs485", "fault")} == {
            "power": "slow",
            "rs485": "flash",
            "fault": "off",
        }
        assert "LED panel" not in substation.log.read_text()  # the fake backend: no warning


def test_the_board_revision_reaches_rpi_lgpio_past_the_hidden_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ProcSubset=pid hides /proc/device-tree; the same big-endian word from sysfs goes in the
    variable rpi-lgpio reads instead (it parses it with int(..., 16))."""
    monkeypatch.delenv("RPI_LGPIO_REVISION", raising=False)
    export_board_revision(tmp_path / "absent")
    assert "RPI_LGPIO_REVISION" not in os.environ  # not a Pi: the import will say so itself
    revision = tmp_path / "linux,revision"
    revision.write_bytes(bytes.fromhex("00d03114"))  # a Raspberry Pi 4 Model B, 8 GB
    export_board_revision(revision)
    assert int(os.environ["RPI_LGPIO_REVISION"], 16) == 0xD03114
    revision.write_bytes(bytes.fromhex("00c04170"))
    export_board_revision(revision)
    assert int(os.environ["RPI_LGPIO_REVISION"], 16) == 0xD03114  # set by hand or earlier: kept
