"""How every `mmretain` command runs: its own progress bars only, and a user error as one line.

A user error (bad input, a missing file, a model that cannot be used) prints
``PROG: error: MESSAGE`` on stderr and exits with code 2, with no traceback; the message says
what was wrong and how to fix it. Warnings print as one line too.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

from .errors import MMRetainError

USER_ERRORS: tuple[type[BaseException], ...] = (MMRetainError, ValueError, OSError)


def run_command(
    prog: str, action: Callable[[], object], errors: tuple[type[BaseException], ...] = USER_ERRORS
) -> int:
    """Run ``action`` and return the exit code: 0, or 2 after one line for ``errors``."""
    from transformers.utils import logging

    from .media import quiet_decoders

    # The command reports its own progress; loading bars and warnings would bury it.
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    # datasets (eval) loads later, if at all, and reads these at import; a user's own stay. Its
    # error logs only repeat what becomes the command's one error line.
    os.environ.setdefault("DATASETS_VERBOSITY", "critical")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    quiet_decoders()

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"{prog}: warning: {message}", file=sys.stderr)

    shown, warnings.showwarning = warnings.showwarning, one_line_warning
    try:
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
