"""The ``cxr-lightning`` command.

* ``cxr-lightning fit|validate|test|predict --config FILE.yaml``: LightningCLI. The model is
  chosen by ``class_path``; the number of labels, label names, metadata width and positive-class
  weights come from the DataModule (linked, never typed twice).
* ``cxr-lightning data stats|split|synth|download``: data commands (``--help`` on each).
* ``cxr-lightning report --runs runs``: the paper's tables from the run directories.
* ``cxr-lightning predict --checkpoint CKPT --images ...`` (also ``predict-files``), ``export`` and
  ``explain``: using a trained checkpoint on PNG, JPEG or DICOM files, with no training data.

``--config NAME`` that is not a file in the working directory resolves to the shipped config of
that name (``resnet_log``, ``resnet_log.yaml`` or ``configs/resnet_log.yaml``), also for an
installed package.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from importlib import resources
from pathlib import Path

STANDALONE_COMMANDS = {"predict-files": "cxr_lightning.inference", "export": "cxr_lightning.export", "explain": "cxr_lightning.explain"}


def shipped_config(name: str) -> Path | None:
    """Path of a config shipped with the package, by bare name, or None."""
    stem = Path(name).name
    base = resources.files("cxr_lightning.configs")
    for candidate in (stem, stem + ".yaml"):
        path = Path(str(base / candidate))
        if path.is_file():
            return path
    return None


def shipped_config_names() -> list[str]:
    return sorted(p.name for p in Path(str(resources.files("cxr_lightning.configs"))).glob("*.yaml"))


def resolve_config_args(args: list[str]) -> list[str]:
    """Replace each ``--config X`` whose X is not a file by the shipped config of that name."""
    out = list(args)
    for i, arg in enumerate(out):
        value, prefix = None, ""
        if arg in ("--config", "-c") and i + 1 < len(out):
            value, index = out[i + 1], i + 1
        elif arg.startswith("--config="):
            value, index, prefix = arg.split("=", 1)[1], i, "--config="
        if value is None or Path(value).is_file():
            continue
        found = shipped_config(value)
        if found is None:
            raise SystemExit(f"config {value!r} is neither a file nor a shipped config; shipped: {', '.join(shipped_config_names())}")
        out[index] = prefix + str(found)
    return out


def main(args: list[str] | None = None) -> int:
    """Entry point; tests call it in-process with a list of arguments."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] == "data":
        from cxr_lightning.data.commands import main as data_main

        return exit_on_user_error(data_main, args[1:])
    if args and args[0] == "report":
        from cxr_lightning.report import main as report_main

        return exit_on_user_error(report_main, args[1:])
    # `predict --checkpoint CKPT --images ...` predicts on image files from a checkpoint alone;
    # `predict --config ... --ckpt_path ...` is LightningCLI's, on the configured data.
    if args and (args[0] in STANDALONE_COMMANDS or (args[0] == "predict" and any(a.startswith("--images") for a in args))):
        module = STANDALONE_COMMANDS.get(args[0], "cxr_lightning.inference")
        return exit_on_user_error(importlib.import_module(module).main, args[1:])
    if args[:1] == ["predict"] and any(a in ("-h", "--help") for a in args):
        print("cxr-lightning predict has two modes:\n"
              "  on image files, from a checkpoint alone:  cxr-lightning predict --checkpoint CKPT --images ... --out preds.csv\n"
              "      (its options: cxr-lightning predict-files --help)\n"
              "  on the configured data split (LightningCLI, its options below):  cxr-lightning predict --config NAME.yaml --ckpt_path CKPT\n")  # fmt: skip
    if not args or args[0] in ("-h", "--help"):
        print("cxr-lightning: train and evaluate chest X-ray classifiers on NIH ChestX-ray14.\n"
              "  cxr-lightning fit|validate|test|predict --config NAME.yaml   (LightningCLI, below)\n"
              "  cxr-lightning data stats|split|synth|download|prepare ...  (cxr-lightning data --help)\n"
              "  cxr-lightning report --runs runs                           (the paper's tables from the runs)\n"
              "  cxr-lightning predict --checkpoint CKPT --images DIR|GLOB|LIST [--metadata CSV] --out preds.csv   (predict-files --help)\n"
              "  cxr-lightning export --checkpoint CKPT --format onnx|torchscript --out model.onnx\n"
              "  cxr-lightning explain --checkpoint CKPT --images ... [--labels ...] --out DIR [--boxes BBox_List_2017.csv]\n"
              f"  shipped configs: {', '.join(shipped_config_names())}\n")  # fmt: skip
    from cxr_lightning.training_cli import CXRLightningCLI

    # We always pass the (config-resolved) arguments explicitly, sys.argv's included.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    def run_lightning_cli(argv: list[str]) -> int:
        CXRLightningCLI(args=resolve_config_args(argv))
        return 0

    return exit_on_user_error(run_lightning_cli, args)


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
    from cxr_lightning.models.weights import WeightsFileError, WeightsNotFoundError
    from cxr_lightning.output_files import OutputFileError, disk_full_message
    from cxr_lightning.run_lock import RunFolderError

    seen = set()
    known = (DataNotFoundError, MetadataError, WeightsNotFoundError, WeightsFileError, CheckpointError, RunFolderError,
             ConfigValueError, OutputFileError, ImageDecodeError)  # fmt: skip
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


if __name__ == "__main__":
    sys.exit(main())
