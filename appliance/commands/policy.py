"""Who may ask, where answers go, and how often a relay may move.

Requests are taken only on this box's request topics (`<prefix>/<id>/cim/in/<verb>/<Noun>`), with a
Header that agrees with the topic and, when `commands.allowed_sources` is set, from a listed MDM
identity. A reply address the MDM gives is used only if it is a plain topic (no wildcards, no `$`
system topics, no URLs): a request must not make the box publish where it should not.
"""

from __future__ import annotations

from appliance.commands import codes
from appliance.commands.requests import Envelope
from appliance.config import Config
from appliance.errors import RequestRefused
from appliance.store import Store
from appliance.store.commands import relay_operations_since

MAX_TOPIC_LENGTH = 256


def topic_verb_noun(config: Config, topic: str) -> tuple[str, str]:
    """(verb, Noun) of a request topic; RequestRefused when the topic is not one of this box's."""
    prefix = config.topic("cim", "in") + "/"
    rest = topic[len(prefix) :].split("/") if topic.startswith(prefix) else []
    if len(rest) != 2 or not all(rest):
        raise RequestRefused(codes.NOT_AUTHORIZED, f"requests are taken on {prefix}<verb>/<Noun> only")
    return rest[0], rest[1]


def authorize(config: Config, topic: str, envelope: Envelope) -> None:
    """Refuse a request whose topic and Header disagree, or whose sender is not on the allow-list."""
    verb, noun = topic_verb_noun(config, topic)
    if (verb, noun) != (envelope.verb, envelope.noun):
        raise RequestRefused(
            codes.TOPIC_MISMATCH, f"topic says '{verb} {noun}', Header says '{envelope.verb} {envelope.noun}'"
        )
    allowed = config.commands.allowed_sources
    if allowed and envelope.source not in allowed and envelope.user not in allowed:
        raise RequestRefused(codes.NOT_AUTHORIZED, f"source {envelope.source[:64]!r} is not an allowed MDM")


def usable_topic(topic: str | None) -> bool:
    """Whether the box may publish a reply to `topic`."""
    return bool(
        topic
        and len(topic) <= MAX_TOPIC_LENGTH
        and not topic.startswith("$")
        and not any(c in topic for c in "+#\0")
        and "://" not in topic
    )


def reply_topic(config: Config, noun: str, response_topic: str | None, reply_address: str = "") -> str:
    """The MQTT 5 response topic, else Header.ReplyAddress, else `<prefix>/<id>/cim/reply/<Noun>`."""
    for candidate in (response_topic, reply_address):
        if usable_topic(candidate):
            return candidate  # type: ignore[return-value]
    safe_noun = noun if usable_topic(noun) and "/" not in noun else "Unknown"
    return config.topic("cim", "reply", safe_noun[:64])


def check_relay_rate(config: Config, store: Store, meter: str, now: int) -> None:
    """RequestRefused (2.9) when `meter` had its share of relay operations in the window."""
    window = config.commands.relay_window_s
    done = relay_operations_since(store, meter, now - window)
    if done >= config.commands.relay_max_operations:
        raise RequestRefused(
            codes.RATE_LIMITED,
            f"meter {meter}: {done} relay operations in the last {window} s (at most "
            f"{config.commands.relay_max_operations}); try later",
        )
