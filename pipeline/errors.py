"""Expected failures and how every command and stage reports them.

This module sits below everything else in the project (of it, it imports only the light bottom
modules threads, timing and files, which import nothing heavier than psutil), so the media, device, checkpoint and model code can raise a
:class:`UserError` without importing the params module, and the stages can report one without
importing the CLI.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from pipeline import threads, timing


class UserError(Exception):
    """An expected failure whose message is the whole story: bad input, params or files.

    Commands and stages print it as one line and exit with status 2, without a traceback.
    """


class ParamsError(UserError, ValueError):
    """A params file that does not match the typed sections; the message names the key."""


# Expected failures: their message is the whole story for the user.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


STAGE_PREFIX = "stage "


@contextlib.contextmanager
def user_errors(prog: str = "v2m") -> Iterator[None]:
    """Turn expected failures into one clear line on stderr and exit status 2.

    Every DVC stage runs its body in ``user_errors("stage <name>")``, which also makes this the one
    place where a stage gets its CPU thread policy (pipeline/threads.py) and its wall time logged
    and recorded (pipeline/timing.py).
    """
    with contextlib.ExitStack() as stack:
        if prog.startswith(STAGE_PREFIX):
            stack.enter_context(timing.stage_clock(prog[len(STAGE_PREFIX):]))
        stack.enter_context(_one_line_errors(prog))
        if prog.startswith(STAGE_PREFIX):
            use_thread_policy()
        yield


def use_thread_policy() -> None:
    """Size torch's CPU threads to the cores free now (pipeline/threads.py), once per process."""
    if threads.applied() is None:
        try:
            threads.apply()
        except ValueError as exc:
            raise UserError(str(exc)) from None


@contextlib.contextmanager
def _one_line_errors(prog: str) -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished outputs are kept, partial ones were removed", file=sys.stderr)
        raise SystemExit(130) from None
