"""The ``cxr-lightning`` command: one table of commands, each with its own ``--help``.

* ``fit``, ``validate``, ``test``, ``predict``: LightningCLI on the configured data (``--config``).
  The model is chosen by ``class_path``; the number of labels, label names, metadata width and
  positive-class weights come from the DataModule (linked, never typed twice). ``predict`` runs a
  checkpoint on a configured split; ``predict-files`` runs one on image files.
* ``predict-files``, ``export``, ``explain``: a trained checkpoint on PNG, JPEG or DICOM files, with
  no training data.
* ``report``: the paper's tables from the run folders; ``data ...``: the data commands.

Every command spells its options alike (``--ckpt_path``, ``--data_root``, underscores, no
abbreviations: see :mod:`cxr_lightning.cli.parser`). ``--config NAME`` that is not a file in the
working directory resolves to the shipped config of that name (``resnet_log``,
``resnet_log.yaml`` or ``configs/resnet_log.yaml``), also for an installed package.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import NamedTuple

from cxr_lightning.cli.configs import resolve_config_args, shipped_config_names
from cxr_lightning.cli.errors import exit_on_user_error


class Command(NamedTuple):
    usage: str  # the arguments shown in the command list
    summary: str
    module: str | None  # the module whose main(argv) runs it; None: LightningCLI


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
COMMANDS: dict[str, Command] = {
    "fit": Command("--config NAME.yaml [--trainer.* --model.* --data.*]", "train (and with test_after_fit: test the best checkpoint)", None),
    "validate": Command("--config NAME.yaml --ckpt_path CKPT", "metrics and tuned thresholds on the validation split", None),
    "test": Command("--config NAME.yaml --ckpt_path CKPT", "metrics, per_label.csv and test_predictions.csv on the test split", None),
    "predict": Command("--config NAME.yaml --ckpt_path CKPT", "predictions for the configured split (predict_predictions.csv)", None),
    "predict-files": Command("--ckpt_path CKPT --images DIR|GLOB|LIST [--metadata CSV] --out preds.csv",
                             "probabilities and tuned decisions for image files (PNG, JPEG, DICOM)", "cxr_lightning.inference.predict_command"),
    "export": Command("--ckpt_path CKPT --format onnx|torchscript --out model.onnx", "a deployable model with a JSON sidecar",
                      "cxr_lightning.inference.export_command"),
    "explain": Command("--ckpt_path CKPT --images ... --out DIR [--labels ...] [--boxes BBox_List_2017.csv]",
                       "Grad-CAM overlays and localisation against bounding boxes", "cxr_lightning.explain.command"),
    "report": Command("--runs runs [--out report.md]", "the paper's tables, tests and figures from the run folders",
                      "cxr_lightning.evaluation.report"),
    "data": Command("stats|split|synth|prepare|download ...", "Table 4, split lists, a synthetic dataset, the image cache, the NIH download",
                    "cxr_lightning.data.commands"),
}  # fmt: skip


def command_list() -> str:
    """``cxr-lightning --help``: every command, its arguments and what it does."""
    width = max(map(len, COMMANDS))
    lines = ["usage: cxr-lightning COMMAND [OPTIONS]   (cxr-lightning COMMAND --help for a command's options)", "",
             "Train and evaluate chest X-ray classifiers on NIH ChestX-ray14.", "", "commands:"]  # fmt: skip
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {command.summary}")
        lines.append(f"  {'':<{width}}    cxr-lightning {name} {command.usage}")
    lines += ["", f"shipped configs (--config NAME): {', '.join(shipped_config_names())}"]
    return "\n".join(lines)


def _usage_error(message: str) -> int:
    print(f"cxr-lightning: error: {message}", file=sys.stderr)
    return 2  # argparse's status for a command line it refuses


# Options that belong to predict-files: `predict` used to run it when given them.
_FILE_MODE_OPTIONS = ("--images", "--checkpoint")


def main(args: list[str] | None = None) -> int:
    """Entry point; tests call it in-process with a list of arguments."""
    args = list(sys.argv[1:] if args is None else args)
    if not args or args[0] in ("-h", "--help"):
        print(command_list())
        return 0
    name = args[0]
    if name not in COMMANDS:
        return _usage_error(f"unknown command {name!r}; the commands are {', '.join(COMMANDS)} (cxr-lightning --help)")
    if name == "predict" and any(a.split("=")[0] in _FILE_MODE_OPTIONS for a in args[1:]):
        return _usage_error("predict runs a checkpoint on the configured data split (--config, --ckpt_path); "
                          "for image files use: cxr-lightning predict-files --ckpt_path CKPT --images ... --out preds.csv")  # fmt: skip
    module = COMMANDS[name].module
    if module is not None:
        return exit_on_user_error(importlib.import_module(module).main, args[1:])
    from cxr_lightning.cli.lightning_cli import CXRLightningCLI

    # We always pass the (config-resolved) arguments explicitly, sys.argv's included.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    def run_lightning_cli(argv: list[str]) -> int:
        CXRLightningCLI(args=resolve_config_args(argv))
        return 0

    return exit_on_user_error(run_lightning_cli, args)


if __name__ == "__main__":
    sys.exit(main())
