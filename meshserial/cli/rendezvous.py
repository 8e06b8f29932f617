"""``meshserial rendezvous``: run the rendezvous service (see docs/rendezvous.md)."""

from __future__ import annotations

import argparse
from collections.abc import Coroutine
from typing import Any

from meshserial.rendezvous.cli import add_arguments, run_from_args

HELP = "run the rendezvous service: an untrusted registry of signed server records"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("rendezvous", help=HELP, description=HELP + ".", parents=[common])
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    return run_from_args(args)
