"""How every `mmretain` command runs: its own progress bars only, and a user error as one line.

A user error (bad input, a missing file, a model that cannot be used) prints
``PROG: error: MESSAGE`` on stderr and exits with code 2, with no traceback; the message says
what was wrong and how to fix it. Warnings print as one line too. An argument error is one such
line, with a pointer to ``--help`` instead of the whole usage (`ArgumentParser`), and every
number is checked as it is parsed (`whole`, `real`, `kv_budget`). Ctrl-C exits with code 130.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from .errors import MMRetainError

USER_ERRORS: tuple[type[BaseException], ...] = (MMRetainError, ValueError, OSError)
# The largest count a command takes: far above any budget, step or frame count that can run,
# and small enough that torch never overflows on it.
MAX_COUNT = 2**31 - 1


class HelpWithDefaults(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it or it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or "default" in text
            # By identity: 0 == False, and a default of 0 is worth showing.
            or any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS))
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line that points to ``--help``, not the usage,
    and whose help shows the defaults.

    Subcommand parsers made with ``add_subparsers`` are of this class too.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # A type may import a library as it parses (`kv_budget` imports torch): Ctrl-C then
        # comes before `run_command` can catch it.
        try:
            return super().parse_known_args(args, namespace)
        except KeyboardInterrupt:
            self.exit(130, f"{self.prog}: interrupted\n")


def add_retention_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that shape what a budget keeps, as every command that runs a policy takes
    them: ``--allocation``, ``--sink``, ``--recent``."""
    parser.add_argument(
        "--allocation",
        default=None,
        choices=("global", "layer", "uniform"),
        help="who competes for the budget (default: the policy's own: global; uniform for "
        "trimkv; what learned gates name)",
    )
    parser.add_argument("--sink", type=whole(0), default=0, help="first tokens protected")
    parser.add_argument("--recent", type=whole(0), default=0, help="last tokens protected")


def whole(low: int = 1, high: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"give a whole number from {low} to {high}, got {text!r}"
            )
        return value

    return parse


def real(
    low: float, high: float = math.inf, *, above: bool = False, below: bool = False
) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in [low, high]; ``above`` and ``below`` leave out
    the bounds themselves."""
    floor = f"above {low:g}" if above else f"at least {low:g}"
    ceiling = f"below {high:g}" if below else f"at most {high:g}"
    bounds = floor if math.isinf(high) else f"{floor} and {ceiling}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        # nan fails every comparison; inf (and 1e400, which parses as inf) fails isfinite.
        fits = (
            math.isfinite(value)
            and (value > low if above else value >= low)
            and (value < high if below else value <= high)
        )
        if not fits:
            raise argparse.ArgumentTypeError(f"give a finite number {bounds}, got {text!r}")
        return value

    return parse


def kv_budget(text: str) -> str:
    """An argparse ``type``: a KV budget as `Budget.parse` reads it, in tokens (at most
    `MAX_COUNT`), a fraction of the prompt or bytes; the text is kept as given."""
    from .budget import Budget  # imports torch: only a command that takes a budget pays for it

    try:
        budget = Budget.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if budget.kind == "tokens" and budget.value > MAX_COUNT:
        raise argparse.ArgumentTypeError(
            f"budget of {text} tokens is more than {MAX_COUNT}; give fewer tokens, a fraction "
            "of the prompt (0.1) or bytes (512MiB)"
        )
    return text


def run_command(
    prog: str, action: Callable[[], object], errors: tuple[type[BaseException], ...] = USER_ERRORS
) -> int:
    """Run ``action`` and return the exit code: 0, or 2 after one line for ``errors``, or 130
    after one line for Ctrl-C, however early it comes."""

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    shown, warnings.showwarning = warnings.showwarning, one_line_warning
    try:
        _quiet_libraries()  # inside the try: importing transformers takes a second or two
        action()
    except errors as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130  # the shell's code for a command ended by Ctrl-C
    finally:
        warnings.showwarning = shown
    return 0


def _quiet_libraries() -> None:
    """The command reports its own progress; loading bars and library logs would bury it."""
    from transformers.utils import logging

    from .media import quiet_decoders

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    # datasets (eval) loads later, if at all, and reads these at import; a user's own stay. Its
    # error logs only repeat what becomes the command's one error line.
    os.environ.setdefault("DATASETS_VERBOSITY", "critical")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    quiet_decoders()
