"""User-facing errors: the CLI prints their message as one sentence, without a traceback."""


class ModinvError(Exception):
    """A problem the user can fix (bad name, bad path, bad file); the message says how."""


class WeightsUnavailableError(ModinvError):
    """Pretrained weights could not be fetched or found locally."""
