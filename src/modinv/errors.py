"""User-facing errors: the CLI prints their message as one sentence, without a traceback."""


class ModinvError(Exception):
    """A problem the user can fix (bad name, bad path, bad file); the message says how."""


class WeightsUnavailableError(ModinvError):
    """Pretrained weights could not be fetched or found locally."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (what schedulers send before they kill a job): handled like
    Ctrl-C (locks released, finished work kept); the command line exits with status 143."""


def brief(exc: BaseException, limit: int = 200) -> str:
    """``"TypeName: first line of the message"`` for quoting a library's exception inside a one-sentence
    error: torch's, Pillow's and safetensors' messages can run over several lines, with links and
    terminal colour codes."""
    import re

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = re.sub(r"\x1b\[[0-9;]*m", "", lines[0]).strip() if lines else ""
    if len(first) > limit:
        first = first[: limit - 3].rstrip() + "..."
    name = type(exc).__name__
    return f"{name}: {first}" if first else name
