"""`hes console` and `hes console user add|passwd|del|list`: the shell, and its accounts for an
administrator on the box (root, or hes: they write the store directly, the daemon running or not).
`hes console user hash` needs no box: it makes the hash lines of a card's hes/console-users."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable

from appliance.clock import Clock
from appliance.config import Config
from appliance.console import accounts
from appliance.console.accounts import Role
from appliance.console.shell import run_console
from appliance.errors import HesError
from appliance.model import epoch
from appliance.store import open_store


def add_console_parser(
    subcommands: argparse._SubParsersAction, add_config: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add `console` and `console user ...` to the `hes` subcommands."""
    console = subcommands.add_parser(
        "console",
        help="the technician's shell (the serial console's login shell)",
        description="Sign in and run network-gear style commands: show, read, relay, export, config. "
        "Type ? or help inside. `hes console user ...` manages the console's accounts.",
    )
    add_config(console)
    users = console.add_subparsers(dest="console_command", metavar="ACTION")
    user = users.add_parser("user", help="manage console accounts (as root or hes)")
    actions = user.add_subparsers(dest="user_action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create an account (asks for its password)")
    add.add_argument("name")
    add.add_argument("--role", choices=[r.label for r in Role], required=True)
    add.add_argument(
        "--os-login", action="store_true", help="no password: signs in with the OS login of this name"
    )
    actions.add_parser("passwd", help="set a new password (also lifts a lockout)").add_argument("name")
    actions.add_parser("del", help="remove an account (its audit entries stay)").add_argument("name")
    actions.add_parser("list", help="list the accounts")
    actions.add_parser(
        "hash",
        help="print the scrypt hash of a password (asks twice; reads two lines when not a terminal)",
        description="For a card's hes/console-users (NAME ROLE HASH lines): prepare accounts on a "
        "laptop without a clear password on the card. Needs no config.",
    )


def run_console_command(args: argparse.Namespace, box: Callable[[], Config]) -> int:
    """Run `hes console` or one of its `user` actions; returns the exit code. `box` loads the box's
    config, which `user hash` does not need (it runs on a laptop)."""
    if args.console_command != "user":
        return run_console(box())
    if args.user_action == "hash":
        print(accounts.hash_password(_new_password()))
        return 0
    store = open_store(box())
    try:
        now = epoch(Clock().now())
        if args.user_action == "add":
            name = accounts.check_name(args.name)  # before asking for a password
            password = None if args.os_login else _new_password()
            accounts.add_user(store, name, Role.named(args.role), password, now)
            print(f"account {args.name} ({args.role}) created")
        elif args.user_action == "passwd":
            accounts.set_password(store, args.name, _new_password(), now)
            print(f"password of {args.name} set")
        elif args.user_action == "del":
            accounts.delete_user(store, args.name)
            print(f"account {args.name} removed")
        else:
            for row in accounts.list_users(store):
                locked = " locked" if row["locked_until"] > now else ""
                login = "password" if row["has_password"] else "OS login"
                print(f"{row['name']:<20} {row['role']:<11} {login}{locked}")
    finally:
        store.close()
    return 0


def _new_password() -> str:
    """Asked twice on a terminal; from a pipe, the first two lines (so scripts can make hashes)."""
    ask = getpass.getpass if sys.stdin.isatty() else _read_line
    password = accounts.check_new_password(ask("new password: "))
    if ask("again: ") != password:
        raise HesError("the passwords differ; nothing changed")
    return password


def _read_line(prompt: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise HesError(f"no input for {prompt.rstrip(': ')!r}")
    return line.rstrip("\r\n")
