"""Expected failures and how every command and stage reports them.

This module sits below everything else in the project (it imports nothing from it), so the
media, device, checkpoint and model code can raise a :class:`UserError` without importing the
params module, and the stages can report one without importing the CLI.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator


class UserError(Exception):
    """An expected failure whose message is the whole story: bad input, params or files.

    Commands and stages print it as one line and exit with status 2, without a traceback.
    """


class ParamsError(UserError, ValueError):
    """A params file that does not match the typed sections; the message names the key."""


# Expected failures: their message is the whole story for the user.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError)


@contextlib.contextmanager
def user_errors(prog: str = "v2m") -> Iterator[None]:
    """Turn expected failures into one clear line on stderr and exit status 2."""
    try:
        yield
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished outputs are kept, partial ones were removed", file=sys.stderr)
        raise SystemExit(130) from None
