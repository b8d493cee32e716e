"""Entry-point plumbing shared by train, evaluate and export: a user's mistake is one message and exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from hpft.errors import UserInputError

USAGE_EXIT_CODE = 2
_task_started = False


def exits_on_user_error(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task so a `UserInputError` prints its message alone and exits with `USAGE_EXIT_CODE`.

    Anything else is a bug and keeps its traceback. Put it under `@hydra.main`.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _task_started
        _task_started = True
        try:
            return task(*args, **kwargs)
        except UserInputError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(USAGE_EXIT_CODE)

    return wrapper


def run(main: Callable[[], Any]) -> None:
    """Call a `@hydra.main` entry point, turning Hydra's composition errors into `USAGE_EXIT_CODE` too.

    Hydra exits 1 when it cannot compose (an unknown option `schedule=bogus`, a misspelt key `kepp=0.3`) after
    printing the message and the choices; those are the user's to fix as well. Exit 1 after the task started is
    left alone.
    """
    global _task_started
    _task_started = False  # per call: a process may run several entry points (tests, notebooks)
    try:
        main()
    except SystemExit as exit_:
        if exit_.code == 1 and not _task_started:
            sys.exit(USAGE_EXIT_CODE)
        raise
