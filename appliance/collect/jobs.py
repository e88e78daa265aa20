"""What a bus worker runs: jobs by priority, and the port wrapper that lets a command cut in.

A bus carries one request at a time. Routine polls run with `BusPort.yielding` on, so that a command
that arrives while a poll is under way takes the bus at the next request boundary: the poll raises
`Preempted` before its next request, hangs up (one DISC, so the meter frees its association at once)
and runs again after the command. What it had already read is read
again then; the store's keys make that harmless.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from appliance.collect.dlms.session import FramePort
from appliance.config import Config, MeterSpec
from appliance.errors import Preempted


class JobPriority(IntEnum):
    """Lower runs first: MDM and console commands, then catch-up of missed data, then routine."""

    COMMAND = 0
    CATCHUP = 1
    ROUTINE = 2


class Task(StrEnum):
    """The parts of a meter's schedule (`[schedules.<model>]`); a poll runs those that are due."""

    REGISTERS = "registers"
    PROFILE = "profile"
    EVENTS = "events"
    CLOCK = "clock"


def task_interval(config: Config, meter: MeterSpec, task: Task) -> int:
    """Seconds between two reads of `task` of `meter` (0: its model never reads it): the meter's own
    poll interval for its registers, else its model's schedule. The same on a bus and over the WAN."""
    if task is Task.REGISTERS and meter.poll_interval_s:
        return meter.poll_interval_s
    return int(getattr(config.schedules[meter.model], f"{task.value}_s"))


_sequence = itertools.count()


@dataclass(order=True)
class Job:
    """A callable the bus thread runs with the bus in hand; its outcome goes to `future`."""

    priority: JobPriority
    seq: int = field(default_factory=lambda: next(_sequence))
    action: Callable[[Any], Any] = field(default=lambda _access: None, compare=False)
    future: Future = field(default_factory=Future, compare=False)
    label: str = field(default="", compare=False)


class BusPort:
    """The bus's port as the readers see it: gives way before a request while `yielding` is on and a
    command waits (`urgent()`)."""

    def __init__(
        self, port: FramePort, urgent: Callable[[], bool], on_request: Callable[[], None] = lambda: None
    ) -> None:
        self.port = port
        self.urgent = urgent
        self.on_request = on_request  # the RS-485 activity LED
        self.yielding = False

    @property
    def is_open(self) -> bool:
        """Whether the device is open."""
        return self.port.is_open

    def open(self) -> None:
        """Open the device."""
        self.port.open()

    def close(self) -> None:
        """Close the device."""
        self.port.close()

    def exchange(self, request: bytes, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """Send and read one answer, unless a command is waiting and this job may be interrupted."""
        if self.yielding and self.urgent():
            self.yielding = False  # what the job sends to leave cleanly (a DISC) goes through
            raise Preempted("a command is waiting for the bus")
        self.on_request()
        return self.port.exchange(request, needed, timeout_s)

    def receive(self, needed: Callable[[bytes], int], timeout_s: float) -> bytes:
        """The rest of an answer already asked for: never interrupted."""
        return self.port.receive(needed, timeout_s)
