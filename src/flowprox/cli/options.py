"""What every subcommand shares: the parser class (defaults shown in help, one-line errors) and
the option types and options spelled the same everywhere (``--device``, ``--strict``)."""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

from flowprox.config import check_device


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default, except where there is none (a required flag, or ``None``:
    the flag is simply not given) or the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or action.default is None or "(default" in text:
            return text
        return super()._get_help_string(action)


class FlowproxParser(argparse.ArgumentParser):
    """An argument parser whose help shows every default and whose errors are one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Exit with code 2 and one line: what is wrong and where the help is."""
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _finite(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def device_name(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` (the one check, ``flowprox.config.check_device``)."""
    try:
        return check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_device_argument(parser: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """``--device cpu|cuda|cuda:N``."""
    parser.add_argument(
        "--device",
        type=device_name,
        default=default,
        metavar="DEVICE",
        help=f"cpu, cuda or cuda:N: {what}",
    )


def add_strict_argument(parser: argparse.ArgumentParser) -> None:
    """``--strict``: unreadable image files are errors instead of skipped with a warning."""
    parser.add_argument(
        "--strict",
        action="store_true",
        help="an unreadable image in a data folder is an error (without it: skipped, counted "
        "in one warning)",
    )
