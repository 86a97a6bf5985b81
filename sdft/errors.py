"""The errors sdft raises on purpose, one class per kind, all under ``SdftError``.

The CLI prints an ``SdftError`` as one line (``sdft: <kind> error: <message>``) and exits with its
``exit_code``: the message already names the option, file, line or stage to fix, so a traceback
would only hide it. Anything else (a CUDA out-of-memory, a library bug) is not ours to explain: the
CLI shows its traceback. Raise one of these only when the message tells the user what to do.
"""

from __future__ import annotations


class SdftError(Exception):
    """Base of every error that sdft reports to the user as one line."""

    kind = "sdft"
    exit_code = 1


class ConfigError(SdftError, ValueError):
    """A config value is missing, unknown or inconsistent (also found once work has started, e.g. a
    tokenizer without the chat template that ``template: chat`` needs). The message names the option."""

    kind = "config"
    exit_code = 2


class DataError(SdftError, ValueError):
    """Bad input data (a record, a conversation, a hub data set that cannot be read), or an output file
    that cannot be read back; the message names the data set or file, the line or the conversation id.
    Exit code 2, like a config error: the input has to change before a rerun can do better."""

    kind = "data"
    exit_code = 2


class StageError(SdftError, RuntimeError):
    """A stage cannot run: its input stage is missing, or its folder holds output of another config."""

    kind = "stage"


class EvalError(SdftError, RuntimeError):
    """An evaluation cannot run (missing data or package); the message says what to do."""

    kind = "eval"


class OutputError(SdftError, OSError):
    """Writing an output failed: a full disk, a read-only folder, a file where a folder should be. The
    message names the path and the cause; what was written before is kept, so a rerun continues."""

    kind = "output"
