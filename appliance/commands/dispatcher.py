"""The command dispatcher: one thread from the MDM's request to its two replies.

Arrival (paho's thread only queues it) -> parse, authorise, journal the request and queue the
synchronous reply in one transaction -> PUBACK to the broker -> run each meter's part on its bus, one
job per bus at a time, highest priority and oldest first -> journal each outcome -> when every
meter is done, journal the request's end and queue the outcome reply in one transaction.

The journal makes it durable and idempotent: a MessageID seen before is answered from the journal
and not executed again; after a restart, work a crash interrupted runs again (a relay operation or a
read done twice ends the same way) or is reported expired.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

from appliance.clock import Clock
from appliance.collect.collector import Collector
from appliance.commands import codes, policy
from appliance.commands.jobs import Outcome, job_for, needs_bus
from appliance.commands.meter_config import load_key_wrap_key, meter_spec, settings_of
from appliance.commands.replies import (
    OUTCOME_VERBS,
    ReplyError,
    control_results,
    meter_config,
    response,
    usage_point_config,
)
from appliance.commands.requests import Envelope, Parsed, Request, parse_request, read_envelope
from appliance.config import Config
from appliance.errors import (
    DeviceError,
    DeviceTimeout,
    HesError,
    NotConnected,
    RequestRefused,
    StoreError,
    TariffError,
    UnknownMeter,
)
from appliance.model import epoch
from appliance.store import Store
from appliance.store.commands import (
    FINAL_STATES,
    Command,
    State,
    Target,
    command_by_message_id,
    finish_command,
    insert_command,
    open_commands,
    reopen_interrupted,
    set_target,
    targets_of,
)
from appliance.store.events import events_of
from appliance.store.outbox import Priority
from appliance.store.readings import readings_between
from appliance.store.registry import ACTIVE, registered_meter
from appliance.tariff.service import assign, settings_from_config, tariff_named, top_up
from appliance.uplink import cim
from appliance.uplink.messages import Built, enqueue
from appliance.uplink.mqtt import InboundMessage, MqttLink

log = logging.getLogger(__name__)

WAIT_S = 0.2  # the longest the loop sleeps before it looks at the stop flag again
# With nothing arriving only expiries (whole seconds) can change: the journal is gone through this often.
IDLE_LOOK_S = 1.0
KINDS = {"control": "relay", "read": "read", "events": "events", "meter_config": "config", "tariff": "tariff"}


@dataclass(frozen=True)
class _Done:
    """A bus job ended (posted from the bus thread through the inbox)."""

    command: int
    meter: str
    lane: str  # Collector.lane: the bus, or a WAN meter's connection
    future: Future


class CommandDispatcher(threading.Thread):
    """Owns the command journal; talks to the buses only through the Collector."""

    def __init__(
        self,
        config: Config,
        store_factory: Callable[[], Store],
        collector: Collector,
        link: MqttLink,
        clock: Clock,
        on_reply: Callable[[], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="commands", daemon=True)
        self.config, self.collector, self.link, self.clock = config, collector, link, clock
        self._store_factory, self._on_reply, self._halt = store_factory, on_reply, stop
        self.inbox: queue.Queue[InboundMessage | _Done] = queue.Queue()
        self.heartbeat = time.monotonic()
        self._busy: dict[str, tuple[int, str]] = {}  # lane -> (command, meter) it is running for us
        self.keys_dir = config.hes.data_dir / "keys"
        self.tariffs = settings_from_config(config.tariffs)
        link.serve_requests(self.offer)

    def offer(self, message: InboundMessage) -> None:
        """From paho's thread: a request arrived (it is journalled and acknowledged on this thread)."""
        self.inbox.put(message)

    def run(self) -> None:
        """Journal, execute and answer until told to stop."""
        store = self._store_factory()
        try:
            reopened = reopen_interrupted(store, epoch(self.clock.now()))
            if reopened:
                log.info("commands: %d meter operations interrupted by a restart run again", reopened)
            next_look = 0.0
            while not self._halt.is_set():
                self.heartbeat = time.monotonic()
                try:
                    item = self.inbox.get(timeout=WAIT_S)
                except queue.Empty:
                    item = None
                if item is None and time.monotonic() < next_look:
                    continue
                next_look = time.monotonic() + IDLE_LOOK_S
                try:
                    if isinstance(item, InboundMessage):
                        self._intake(store, item)
                    elif isinstance(item, _Done):
                        self._job_done(store, item)
                    self._advance(store)
                except StoreError as exc:
                    log.error("commands: %s", exc)
                    self._halt.wait(1.0)
        finally:
            store.close()

    # -- arrival

    def _intake(self, store: Store, message: InboundMessage) -> None:
        """Journal or refuse one request, queue its synchronous reply, then acknowledge it."""
        now = self.clock.now()
        noun = ""
        envelope: Envelope | None = None
        try:
            noun = policy.topic_verb_noun(self.config, message.topic)[1]
            envelope, root = read_envelope(message.payload, self.config.commands.max_request_bytes)
            noun = envelope.noun
            policy.authorize(self.config, message.topic, envelope)
            to = ReplyTo(
                policy.reply_topic(self.config, noun, message.response_topic, envelope.reply_address),
                message.correlation_data,
            )
            earlier = command_by_message_id(store, envelope.message_id) if envelope.message_id else None
            if earlier is not None:
                self._answer_again(store, earlier, to)
            else:
                try:
                    parsed = parse_request(envelope, root, self.config.commands.controls, now)
                except RequestRefused as exc:
                    if not envelope.message_id:
                        raise
                    self._journal_refusal(store, envelope, to, exc, now)
                else:
                    self._journal(store, parsed, to, message, now)
        except RequestRefused as exc:
            log.warning("commands: request on %s refused: %s", message.topic[:120], exc)
            to = ReplyTo(
                policy.reply_topic(
                    self.config,
                    noun or "Unknown",
                    message.response_topic,
                    envelope.reply_address if envelope else "",
                ),
                message.correlation_data,
            )
            correlation = (envelope.correlation_id or envelope.message_id) if envelope else ""
            reply = self._reply(
                "reply", noun or "Unknown", correlation, "FAILED", [ReplyError(exc.code, exc.reason)], to
            )
            with store.transaction() as conn:
                enqueue(conn, reply, Priority.REPLY, epoch(now))
        self.link.ack(message)
        self._on_reply()

    def _journal(
        self, store: Store, parsed: Parsed, to: ReplyTo, message: InboundMessage, now: datetime
    ) -> None:
        envelope, request = parsed.envelope, parsed.request
        expiries = [epoch(now) + self.config.commands.default_expiry_s]
        if parsed.expires_at is not None:
            expiries.append(epoch(parsed.expires_at))
        if message.expiry_s is not None:
            expiries.append(int(message.received) + message.expiry_s)
        expires_at = min(expiries)
        targets = [self._new_target(store, request, meter, now) for meter in request.meters]
        refused = [t for t in targets if t.state is State.FAILED]
        errors = [ReplyError(t.error_code, t.reason, t.meter) for t in refused]
        if expires_at <= epoch(now):
            state, result = State.EXPIRED, "FAILED"
            errors = [ReplyError(codes.EXPIRED, "the request expired before it arrived")]
            targets = [Target(0, t.meter, t.kind, State.EXPIRED, codes.EXPIRED, "expired") for t in targets]
        elif len(refused) == len(targets):
            state, result = State.FAILED, "FAILED"
        else:
            state, result = State.ACCEPTED, "PARTIAL" if refused else "OK"
        with store.transaction() as conn:
            command_id = insert_command(
                conn,
                message_id=envelope.message_id,
                correlation_id=envelope.correlation_id or envelope.message_id,
                verb=envelope.verb,
                noun=envelope.noun,
                source=envelope.source,
                reply_topic=to.topic,
                reply_correlation=to.correlation_data,
                request=request.to_json(),
                priority=parsed.priority,
                state=state,
                received_at=epoch(now),
                expires_at=expires_at,
                targets=targets,
                reply=(result, errors[0].code, errors[0].reason)
                if state is not State.ACCEPTED
                else (result, codes.ACCEPTED, "accepted"),
            )
            if state is State.ACCEPTED:
                errors.insert(0, _accepted(command_id))
            reply = self._reply(
                "reply", envelope.noun, envelope.correlation_id or envelope.message_id, result, errors, to
            )
            enqueue(conn, reply, Priority.REPLY, epoch(now))
        if state is State.ACCEPTED:
            log.info(
                "commands: %d accepted: %s %s for %d meters",
                command_id,
                envelope.verb,
                envelope.noun,
                len(targets),
            )
        else:
            log.warning("commands: request %s refused: %s", envelope.message_id[:64], errors[0].reason)

    def _new_target(self, store: Store, request: Request, meter_id: str, now: datetime) -> Target:
        """One meter of a new request: accepted, or refused with why (unknown meter or tariff, rate limit)."""
        kind = {"clock_sync": "clock", "credit": "credit"}.get(request.action) or KINDS[request.operation]
        try:
            if request.operation != "meter_config" and self.collector.meter(meter_id, store) is None:
                raise RequestRefused(
                    codes.UNKNOWN_METER, f"meter {meter_id} is not registered on a running bus"
                )
            if kind == "relay":
                policy.check_relay_rate(self.config, store, meter_id, epoch(now))
            if kind == "tariff" and not request.tariff_text:
                self._known_tariff(request.tariff)
        except RequestRefused as exc:
            return Target(0, meter_id, kind, State.FAILED, exc.code, exc.reason)
        return Target(0, meter_id, kind, State.ACCEPTED)

    def _known_tariff(self, name: str) -> None:
        try:
            tariff_named(self.tariffs, name)
        except TariffError as exc:
            raise RequestRefused(codes.UNKNOWN_TARIFF, str(exc)) from None

    def _journal_refusal(
        self, store: Store, envelope: Envelope, to: ReplyTo, refusal: RequestRefused, now: datetime
    ) -> None:
        """A refused request with a MessageID is journalled too, so that a duplicate gets the same answer."""
        log.warning("commands: request %s refused: %s", envelope.message_id[:64], refusal)
        with store.transaction() as conn:
            insert_command(
                conn,
                message_id=envelope.message_id,
                correlation_id=envelope.correlation_id or envelope.message_id,
                verb=envelope.verb,
                noun=envelope.noun,
                source=envelope.source,
                reply_topic=to.topic,
                reply_correlation=to.correlation_data,
                request={},
                priority=0,
                state=State.FAILED,
                received_at=epoch(now),
                expires_at=epoch(now),
                targets=[],
                reply=("FAILED", refusal.code, refusal.reason),
            )
            reply = self._reply(
                "reply",
                envelope.noun,
                envelope.correlation_id or envelope.message_id,
                "FAILED",
                [ReplyError(refusal.code, refusal.reason)],
                to,
            )
            enqueue(conn, reply, Priority.REPLY, epoch(now))

    def _answer_again(self, store: Store, command: Command, to: ReplyTo) -> None:
        """A MessageID seen before: the same answers again (the outcome too, once there is one);
        nothing is done twice."""
        log.info("commands: %s repeats command %d; answered again", command.message_id[:64], command.id)
        targets = targets_of(store, command.id)
        now = epoch(self.clock.now())
        errors = [
            _accepted(command.id)
            if command.reply_code == codes.ACCEPTED
            else ReplyError(command.reply_code, command.reply_reason)
        ]
        errors += [ReplyError(t.error_code, t.reason, t.meter) for t in targets if _refused_on_arrival(t)]
        with store.transaction() as conn:
            reply = self._reply(
                "reply", command.noun, command.correlation_id, command.reply_result, errors, to
            )
            enqueue(conn, reply, Priority.REPLY, now)
            if command.reply_code == codes.ACCEPTED and command.state in FINAL_STATES:
                for outcome in self._outcome(store, command, targets, to):
                    enqueue(conn, outcome, Priority.REPLY, now)

    # -- execution

    def _advance(self, store: Store) -> None:
        """Start what can start, expire what waited too long, finish what is complete."""
        now = epoch(self.clock.now())
        for command in open_commands(store):
            targets = targets_of(store, command.id)
            request = Request.from_json(command.request)
            for target in targets:
                if target.state is not State.ACCEPTED:
                    continue
                if now >= command.expires_at:
                    self._set(
                        store, command.id, target.meter, State.EXPIRED, codes.EXPIRED, "expired before it ran"
                    )
                elif request.operation == "meter_config":
                    self._configure(store, command, request, target.meter)
                elif request.action == "credit":
                    self._credit(store, command, request, target.meter)
                elif request.operation == "tariff":
                    self._assign(store, command, request, target.meter)
                else:
                    self._start(store, command, request, target.meter)
            targets = targets_of(store, command.id)
            if all(t.state in FINAL_STATES for t in targets):
                self._finish(store, command, targets)

    def _start(self, store: Store, command: Command, request: Request, meter_id: str) -> None:
        meter = self.collector.meter(meter_id, store)
        if meter is None:
            self._set(
                store,
                command.id,
                meter_id,
                State.FAILED,
                codes.UNKNOWN_METER,
                f"meter {meter_id} was removed",
            )
            return
        if not needs_bus(request, meter):
            self._set(store, command.id, meter_id, State.SUCCEEDED)
            return
        lane = self.collector.lane(meter)
        if lane in self._busy:
            return  # one job of ours per bus (per WAN meter): the rest wait here, in priority order
        try:
            future = self.collector.submit(
                meter_id,
                job_for(request, command.id, command.expires_at, self.clock),
                deadline=command.expires_at,  # a WAN meter's job waits for its call until then
            )
        except UnknownMeter as exc:
            self._set(store, command.id, meter_id, State.FAILED, codes.UNKNOWN_METER, str(exc))
            return
        self._busy[lane] = (command.id, meter_id)
        self._set(store, command.id, meter_id, State.QUEUED)
        future.add_done_callback(lambda done: self.inbox.put(_Done(command.id, meter_id, lane, done)))

    def _job_done(self, store: Store, done: _Done) -> None:
        self._busy.pop(done.lane, None)
        try:
            outcome: Outcome = done.future.result()
        except RequestRefused as exc:
            state = State.EXPIRED if exc.code == codes.EXPIRED else State.FAILED
            self._set(store, done.command, done.meter, state, exc.code, exc.reason)
        except NotConnected as exc:  # a WAN meter that did not call in time
            self._set(store, done.command, done.meter, State.EXPIRED, codes.EXPIRED, str(exc))
        except DeviceTimeout as exc:
            self._set(store, done.command, done.meter, State.FAILED, codes.DEVICE_TIMEOUT, str(exc))
        except DeviceError as exc:
            self._set(store, done.command, done.meter, State.FAILED, codes.DEVICE_REFUSED, str(exc))
        except HesError as exc:
            self._set(store, done.command, done.meter, State.FAILED, codes.FAILED, str(exc))
        else:
            state = State.SUCCEEDED if outcome.ok else State.FAILED
            self._set(store, done.command, done.meter, state, outcome.code, outcome.reason, outcome.detail)

    def _configure(self, store: Store, command: Command, request: Request, meter_id: str) -> None:
        """create/change/delete of one meter: in the registry and on its bus at once."""
        entry = next(e for e in request.entries if e.mrid == meter_id)
        try:
            existing = registered_meter(store, meter_id)
            active = existing is not None and existing[2] == ACTIVE
            if request.action == "delete":
                if not self.collector.unregister(meter_id):
                    raise RequestRefused(codes.UNKNOWN_METER, f"meter {meter_id} is not registered")
                detail = {"state": "removed"}
            else:
                if request.action == "create" and active:
                    raise RequestRefused(
                        codes.BAD_CONTENT, f"meter {meter_id} is registered already; use change"
                    )
                if request.action == "change" and not active:
                    raise RequestRefused(codes.UNKNOWN_METER, f"meter {meter_id} is not registered")
                key = load_key_wrap_key(self.config.commands.key_wrap_file) if entry.wrapped_keys else None
                spec = meter_spec(entry, self.config, key, self.keys_dir)
                self.collector.register(spec, "mdm")
                detail = {"model": spec.model, **settings_of(spec)}
        except RequestRefused as exc:
            self._set(store, command.id, meter_id, State.FAILED, exc.code, exc.reason)
        except UnknownMeter as exc:
            self._set(store, command.id, meter_id, State.FAILED, codes.BAD_CONTENT, str(exc))
        else:
            self._set(store, command.id, meter_id, State.SUCCEEDED, detail=detail)

    def _credit(self, store: Store, command: Command, request: Request, meter_id: str) -> None:
        """A prepay top-up: credited once per MessageID (the journal and the account's own)."""
        try:
            after, credited = top_up(
                store,
                meter_id,
                Decimal(request.amount),
                request.currency,
                command.message_id,
                self.tariffs,
                self.clock.now(),
            )
        except TariffError as exc:
            self._set(store, command.id, meter_id, State.FAILED, codes.BAD_CONTENT, str(exc))
            return
        credited_now = "true" if credited else "false"
        detail = {"balance": str(after.balance), "currency": after.currency, "credited": credited_now}
        self._set(store, command.id, meter_id, State.SUCCEEDED, detail=detail)

    def _assign(self, store: Store, command: Command, request: Request, meter_id: str) -> None:
        """A new tariff for a meter: stored at once, priced by the tariff thread from its next round."""
        try:
            assign(
                store,
                self.tariffs,
                meter_id,
                request.tariff,
                request.tariff_text,
                command.message_id,
                self.clock.now(),
            )
        except TariffError as exc:
            self._set(store, command.id, meter_id, State.FAILED, codes.BAD_CONTENT, str(exc))
            return
        self._set(store, command.id, meter_id, State.SUCCEEDED, detail={"tariff": request.tariff})

    def _set(
        self,
        store: Store,
        command_id: int,
        meter: str,
        state: State,
        code: str = "",
        reason: str = "",
        detail: dict[str, str] | None = None,
    ) -> None:
        with store.transaction() as conn:
            set_target(conn, command_id, meter, state, epoch(self.clock.now()), code, reason, detail)

    # -- the end

    def _finish(self, store: Store, command: Command, targets: list[Target]) -> None:
        """Every meter is done: journal the request's end and queue its outcome in one transaction."""
        succeeded = [t for t in targets if t.state is State.SUCCEEDED]
        if len(succeeded) == len(targets):
            state, code, reason = State.SUCCEEDED, codes.OK, ""
        elif succeeded:
            state, code, reason = (
                State.SUCCEEDED,
                codes.PARTIAL,
                f"{len(targets) - len(succeeded)} meters failed",
            )
        elif all(t.state is State.EXPIRED for t in targets):
            state, code, reason = State.EXPIRED, codes.EXPIRED, "expired"
        else:
            state, code, reason = State.FAILED, targets[0].error_code, targets[0].reason
        now = epoch(self.clock.now())
        with store.transaction() as conn:
            finish_command(conn, command.id, state, now, code, reason)
            for reply in self._outcome(
                store, command, targets, ReplyTo(command.reply_topic, command.reply_correlation)
            ):
                enqueue(conn, reply, Priority.REPLY, now)
        log.info("commands: %d %s (%s)", command.id, state.value, reason or "all meters")
        self._on_reply()

    def _outcome(self, store: Store, command: Command, targets: list[Target], to: ReplyTo) -> list[Built]:
        """The outcome reply (pages of it, for a large get) of a finished request."""
        request = Request.from_json(command.request)
        succeeded = [t for t in targets if t.state is State.SUCCEEDED]
        result = "OK" if len(succeeded) == len(targets) else "PARTIAL" if succeeded else "FAILED"
        errors = [
            ReplyError(t.error_code or codes.FAILED, t.reason, t.meter, details=json.dumps(t.detail or {}))
            for t in targets
            if t.state is not State.SUCCEEDED
        ]
        verb = OUTCOME_VERBS[command.verb]
        if request.operation == "control":
            payload = control_results(request.code, [(t.meter, t.detail or {}) for t in targets if t.detail])
            return [self._reply(verb, command.noun, command.correlation_id, result, errors, to, payload)]
        if request.operation == "meter_config":
            payload = meter_config(
                [(t.meter, (t.detail or {}).get("model", ""), _settings(t.detail)) for t in succeeded]
            )
            return [self._reply(verb, command.noun, command.correlation_id, result, errors, to, payload)]
        if request.operation == "tariff":
            payload = usage_point_config([(t.meter, (t.detail or {})["tariff"]) for t in succeeded])
            return [self._reply(verb, command.noun, command.correlation_id, result, errors, to, payload)]
        if request.operation == "events":
            events = [
                e
                for t in succeeded
                for e in events_of(store, t.meter)
                if request.start is None or request.start <= epoch(e.created) < (request.end or 2**62)
            ]
            payload = cim.end_device_events(events)
            return [self._reply(verb, command.noun, command.correlation_id, result, errors, to, payload)]
        readings = []
        for target in succeeded:
            detail = target.detail or {}
            start = int(detail["start"]) if "start" in detail else request.start or 0
            end = int(detail["end"]) if "end" in detail else request.end or 0
            readings += [
                r
                for r in readings_between(store, target.meter, start, end)
                if not request.reading_types or r.reading_type.code in request.reading_types
            ]
        size = self.config.uplink.batch_max_readings
        pages = [readings[i : i + size] for i in range(0, len(readings), size)] or [[]]
        return [
            self._reply(
                verb,
                command.noun,
                command.correlation_id,
                result,
                errors,
                to,
                cim.meter_readings(page),
                (("MessageIndex", str(index)), ("MessageCount", str(len(pages)))),
            )
            for index, page in enumerate(pages, start=1)
        ]

    def _reply(
        self,
        verb: str,
        noun: str,
        correlation_id: str,
        result: str,
        errors: list[ReplyError],
        to: ReplyTo,
        payload: object = None,
        properties: tuple[tuple[str, str], ...] = (),
    ) -> Built:
        built = response(
            verb=verb,
            noun=noun,
            source=self.config.hes.id,
            now=self.clock.now(),
            correlation_id=correlation_id,
            result=result,
            errors=errors,
            topic=to.topic,
            payload=payload,  # type: ignore[arg-type]
            properties=properties,
        )
        return replace(built, correlation_data=to.correlation_data)


@dataclass(frozen=True)
class ReplyTo:
    """Where a request's answers go: the topic (policy.reply_topic) and, under MQTT 5, the request's
    Correlation Data, which every answer carries back so the MDM can match it without parsing."""

    topic: str
    correlation_data: bytes | None = None


def _settings(detail: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (detail or {}).items() if k != "model"}


def _accepted(command_id: int) -> ReplyError:
    return ReplyError(
        codes.ACCEPTED, f"accepted as command {command_id}; the outcome follows", level="INFORM"
    )


def _refused_on_arrival(target: Target) -> bool:
    """A meter refused before anything was tried (unknown, rate limit): its error is in the first reply."""
    return target.state is State.FAILED and target.error_code[:1] in ("1", "2", "5")
