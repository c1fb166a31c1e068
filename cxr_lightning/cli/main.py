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

from cxr_lightning.cli.configs import resolve_config_args, shipped_config_names
from cxr_lightning.cli.errors import exit_on_user_error

STANDALONE_COMMANDS = {"predict-files": "cxr_lightning.inference.predict_command", "export": "cxr_lightning.inference.export_command", "explain": "cxr_lightning.explain.command"}


def main(args: list[str] | None = None) -> int:
    """Entry point; tests call it in-process with a list of arguments."""
    args = list(sys.argv[1:] if args is None else args)
    if args and args[0] == "data":
        from cxr_lightning.data.commands import main as data_main

        return exit_on_user_error(data_main, args[1:])
    if args and args[0] == "report":
        from cxr_lightning.evaluation.report import main as report_main

        return exit_on_user_error(report_main, args[1:])
    # `predict --checkpoint CKPT --images ...` predicts on image files from a checkpoint alone;
    # `predict --config ... --ckpt_path ...` is LightningCLI's, on the configured data.
    if args and (args[0] in STANDALONE_COMMANDS or (args[0] == "predict" and any(a.startswith("--images") for a in args))):
        module = STANDALONE_COMMANDS.get(args[0], "cxr_lightning.inference.predict_command")
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
    from cxr_lightning.cli.lightning_cli import CXRLightningCLI

    # We always pass the (config-resolved) arguments explicitly, sys.argv's included.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

    def run_lightning_cli(argv: list[str]) -> int:
        CXRLightningCLI(args=resolve_config_args(argv))
        return 0

    return exit_on_user_error(run_lightning_cli, args)


if __name__ == "__main__":
    sys.exit(main())
