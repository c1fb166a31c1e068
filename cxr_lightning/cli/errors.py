"""User errors at the command line: one line on stderr and exit status 1, instead of a traceback.

Only the errors a user can fix (missing data or weights, bad metadata, a broken or untrusted
checkpoint, an option out of range, an unwritable folder, a full disk, an unreadable image) are
shortened; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


def exit_on_user_error(command, argv: list[str]) -> int:
    """Run ``command(argv)``; a known user error (:func:`user_error`) becomes one line on stderr and exit status 1."""
    try:
        return command(argv)
    except Exception as err:  # noqa: BLE001 - only known user errors are shortened, the rest re-raised
        message = user_error(err)
        if message is None:
            raise
        print(f"cxr-lightning: error: {message}", file=sys.stderr)
        return 1


def user_error(err: BaseException) -> str | None:
    """The message of a known user error (missing data or weights, bad metadata, checkpoint or option value,
    unwritable output, full disk), even when wrapped; None for anything else (a bug: its traceback is shown)."""
    from cxr_lightning.checkpoint import CheckpointError
    from cxr_lightning.data.datamodule import ConfigValueError
    from cxr_lightning.data.dataset import DataNotFoundError
    from cxr_lightning.data.images import ImageDecodeError
    from cxr_lightning.data.metadata import MetadataError
    from cxr_lightning.evaluation.predictions_file import PredictionsFileError
    from cxr_lightning.models.weights import WeightsFileError, WeightsNotFoundError
    from cxr_lightning.output_files import OutputFileError, disk_full_message
    from cxr_lightning.training.run_lock import RunFolderError

    seen = set()
    known = (DataNotFoundError, MetadataError, WeightsNotFoundError, WeightsFileError, CheckpointError, RunFolderError,
             ConfigValueError, OutputFileError, ImageDecodeError, PredictionsFileError)  # fmt: skip
    first = err
    while err is not None and id(err) not in seen:
        if isinstance(err, known):
            return _last_line(str(err)) if isinstance(err, ImageDecodeError) else str(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return disk_full_message(first)  # a full disk is the user's to fix, wherever the write was


def _last_line(message: str) -> str:
    """An error raised in a DataLoader worker comes back as "Caught ... Original Traceback ...": its own line is last."""
    line = message.strip().splitlines()[-1] if message.strip() else message
    return line.split("ImageDecodeError: ", 1)[-1]
