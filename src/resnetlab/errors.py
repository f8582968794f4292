"""The exceptions a command turns into one line and an exit status instead of a traceback.

:class:`ResnetlabError` is a mistake the user can make (bad flag, missing file, wrong shape):
exit status 2. :class:`NonFiniteLossError` ends a run whose loss stopped being finite: exit 3.
:class:`TrainingStopped` is a run stopped on purpose by SIGINT or SIGTERM after saving its
state: exit 128 + the signal number (130, 143), as shells report a process killed by it.
:class:`LostContactError`: under torchrun another process died or timed out: exit 1.
Anything else is a bug and is raised normally.
"""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages run long), or its type's name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ResnetlabError(Exception):
    """A user-caused error whose message names the culprit and the fix, in one sentence."""

    exit_code = 2


class NonFiniteLossError(ResnetlabError):
    """The loss or the gradients became NaN or infinite; the state before that step is saved."""

    exit_code = 3


class LostContactError(ResnetlabError):
    """Under torchrun: another process of the job died or stopped answering (exit status 1)."""

    exit_code = 1


class TrainingStopped(Exception):
    """A run stopped by a signal after its state was saved; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
