"""The console's commands, network-gear style: one table drives parsing, abbreviations, tab
completion and `?` help, so the three can never disagree. Pure: no terminal, no store.

Any unambiguous prefix of a word does (`sh met` is `show meters`); `?` lists what may come next.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from appliance.errors import ConsoleInputError


@dataclass(frozen=True)
class Param:
    """A value in a command: `kind` says where completions come from (meter, bus, setting, ...)."""

    name: str
    kind: str
    help: str


@dataclass(frozen=True)
class Command:
    """One command: fixed words (literals, choices of literals, params), then options and at most one
    optional trailing value."""

    key: str
    words: tuple[str | tuple[str, ...] | Param, ...]
    help: str
    options: tuple[tuple[str, Param], ...] = ()
    trailing: Param | None = None

    def literals(self, position: int) -> tuple[str, ...]:
        """The words this command accepts at `position` (none for a param)."""
        word = self.words[position]
        if isinstance(word, str):
            return (word,)
        return word if isinstance(word, tuple) else ()

    def usage(self) -> str:
        """The command as the help list shows it."""
        parts = [
            word if isinstance(word, str) else f"<{word.name}>" if isinstance(word, Param) else "|".join(word)
            for word in self.words
        ]
        parts += [f"[{option} <{param.name}>]" for option, param in self.options]
        if self.trailing:
            parts.append(f"[<{self.trailing.name}>]")
        return " ".join(parts)


METER = Param("meter", "meter", "a meter id (tab completes)")
BUS = Param("bus", "bus", "a bus name")
TIME = Param("time", "time", "UTC: 2024-05-01, 2024-05-01T10:00, now, -24h, -7d")
SETTING = Param("setting", "setting", "a setting (config show lists them)")
VALUE = Param("value", "text", "the new value")
DIRECTORY = Param("dir", "dir", "a directory (default: the USB stick)")
LIMIT = Param("count", "text", "how many (default 20)")

COMMANDS: tuple[Command, ...] = (
    Command("show status", ("show", "status"), "the daemon's health, uplink and backlog"),
    Command("show meters", ("show", "meters"), "the registered meters and how they answer"),
    Command("show meter", ("show", "meter", METER), "one meter: registration, statistics, latest values"),
    Command(
        "show readings",
        ("show", "readings", METER),
        "a meter's stored readings (default: the last 24 h)",
        options=(("--from", TIME), ("--to", TIME)),
    ),
    Command("show gps", ("show", "gps"), "the GPS receiver and the clock"),
    Command("show modem", ("show", "modem"), "the GSM/LTE modem"),
    Command("show wan", ("show", "wan"), "the WAN link's health"),
    Command("show buffer", ("show", "buffer"), "readings and events waiting for the uplink"),
    Command("show events", ("show", "events"), "the newest meter events", trailing=METER),
    Command("show version", ("show", "version"), "software, store and config versions"),
    Command("show audit", ("show", "audit"), "the newest console audit entries (admin)", trailing=LIMIT),
    Command("read", ("read", METER, "now"), "read a meter at once"),
    Command("relay", ("relay", METER, ("connect", "disconnect")), "switch a meter's supply (asks first)"),
    Command("discover", ("discover", "bus", BUS), "look for meters on a bus"),
    Command("test leds", ("test", "leds"), "run the LED panel's self-test"),
    Command(
        "export readings",
        ("export", "readings"),
        "readings as CSV and CIM XML to the USB stick or a directory",
        options=(("--from", TIME), ("--to", TIME), ("--meter", METER)),
        trailing=DIRECTORY,
    ),
    Command("config show", ("config", "show"), "the settings a technician may change"),
    Command("config set", ("config", "set", SETTING, VALUE), "change a setting (applies at restart)"),
    Command("restart", ("restart",), "restart the daemon (asks first)"),
    Command("help", ("help",), "list the commands"),
    Command("exit", ("exit",), "log out"),
)

GROUP_HELP = {
    "show": "show the box's state",
    "config": "the settings a technician may change",
    "export": "copy data to a USB stick",
    "test": "self-tests",
}


@dataclass
class Parsed:
    """A command with its values: params by name, options by their name without dashes."""

    command: Command
    values: dict[str, str] = field(default_factory=dict)


def _resolve(token: str, words: set[str]) -> str | None:
    """The word `token` stands for (itself, or the one word it is a prefix of); None if no word."""
    if token in words:
        return token
    matches = sorted(w for w in words if w.startswith(token))
    if len(matches) > 1:
        raise ConsoleInputError(f"ambiguous {token!r}: {', '.join(matches)}")
    return matches[0] if matches else None


def _filter(tokens: Sequence[str]) -> tuple[list[Command], list[str]]:
    """The commands the fixed words in `tokens` leave possible, and the tokens with words spelled out."""
    viable = list(COMMANDS)
    spelled = list(tokens)
    for position, token in enumerate(tokens):
        fixed = [c for c in viable if position < len(c.words)]
        if not fixed:
            break
        word = _resolve(token, {w for c in fixed for w in c.literals(position)})
        viable = [
            c
            for c in viable
            if position >= len(c.words)
            or (word in c.literals(position) if word else isinstance(c.words[position], Param))
        ]
        if word:
            spelled[position] = word
        if not viable:
            raise ConsoleInputError(f"unknown command word {token!r} (? lists what fits)")
    return viable, spelled


def parse(line: str) -> Parsed | None:
    """The command in `line` (None for an empty line)."""
    try:
        tokens = shlex.split(line)
    except ValueError as exc:
        raise ConsoleInputError(f"cannot split the line: {exc}") from None
    if not tokens:
        return None
    viable, spelled = _filter(tokens)
    complete = [c for c in viable if len(spelled) >= len(c.words)]
    if not complete:
        raise ConsoleInputError("incomplete command (? lists what follows)")
    command = min(complete, key=lambda c: len(c.words))  # "show events" before its trailing meter
    values = {
        word.name if isinstance(word, Param) else "choice": spelled[i]
        for i, word in enumerate(command.words)
        if not isinstance(word, str)
    }
    rest = spelled[len(command.words) :]
    options = dict(command.options)
    while rest:
        token = rest.pop(0)
        option = _resolve(token, set(options)) if token.startswith("--") else None
        if option:
            if not rest:
                raise ConsoleInputError(f"{option} needs a value <{options[option].name}>")
            values[option[2:]] = rest.pop(0)
            del options[option]
        elif token.startswith("--"):
            raise ConsoleInputError(f"unknown option {token!r} for {command.key}")
        elif command.trailing and command.trailing.name not in values:
            values[command.trailing.name] = token
        else:
            raise ConsoleInputError(f"unexpected {token!r}: {command.usage()}")
    return Parsed(command, values)


def _rest(command: Command, extra: Sequence[str]) -> tuple[set[str], int, Param | None]:
    """After the fixed words: the options used, how many other values, and the option whose value
    comes next (if the last token was an option)."""
    options = dict(command.options)
    used: set[str] = set()
    positionals = 0
    pending: Param | None = None
    for token in extra:
        if pending is not None:
            pending = None
        elif token in options:
            used.add(token)
            pending = options[token]
        else:
            positionals += 1
    return used, positionals, pending


def candidates(before: str, values_of: Callable[[str], list[str]]) -> list[tuple[str, str]]:
    """What may follow the complete words in `before` (the line up to the word being typed), each
    with its help; `values_of(kind)` gives the known values of a param (meter ids, buses, ...).
    An entry "<cr>" means the command is complete as it stands."""
    try:
        tokens = shlex.split(before)
        viable, spelled = _filter(tokens)
    except (ValueError, ConsoleInputError):
        return []
    position = len(spelled)
    found: dict[str, str] = {}
    for command in viable:
        if position < len(command.words):
            word = command.words[position]
            if isinstance(word, Param):
                found |= _offer(word, values_of)
            else:
                last = position == len(command.words) - 1
                for literal in command.literals(position):
                    help_text = command.help if last or position else GROUP_HELP.get(literal, command.help)
                    found.setdefault(literal, help_text)
            continue
        used, positionals, pending = _rest(command, spelled[len(command.words) :])
        if pending is not None:
            found |= _offer(pending, values_of)
            continue
        found["<cr>"] = command.help
        for option, param in command.options:
            if option not in used:
                found[option] = f"<{param.name}>: {param.help}"
        if command.trailing and positionals == 0:
            found |= _offer(command.trailing, values_of)
    return sorted(found.items(), key=lambda item: (item[0] == "<cr>", item[0]))


def _offer(param: Param, values_of: Callable[[str], list[str]]) -> dict[str, str]:
    """What may stand for `param` next: its known values, else its placeholder."""
    return {value: param.help for value in values_of(param.kind)} or {f"<{param.name}>": param.help}
