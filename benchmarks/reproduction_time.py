"""Wall time of the paper's whole reproduction, projected from measured step rates of every row.

Each row's shipped config (``configs/<row>.yaml``) gives its model, input size and channels,
batch sizes and epochs. The row's own LightningModule is built with random weights (speed does
not depend on them), and its training steps and evaluation batches are timed on synthetic
tensors that already sit on the device. A row's wall time is then

    epochs x (train images / train rate + val images / eval rate) + (val + test images) / eval rate

where the last term is ``test_after_fit`` (validate, then test the best checkpoint), with the
images of the paper split (73,633 / 12,891 / 25,596). This assumes the input keeps up with the
model: ``gpu_all.py`` measures that (the cached pipeline against on-device input). Lightning's
own per-step overhead, checkpoint writing and start-up are left out, so it is a lower bound.

    python benchmarks/reproduction_time.py                                       # this machine, rows as configured
    python benchmarks/reproduction_time.py --device cuda --precision bf16 --channels_last
    python benchmarks/reproduction_time.py --all --epochs 20                     # imbalance rows too; every row 20 epochs
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from train_step_throughput import BEIT_BASE, inference_seconds, synthetic_batch, training_seconds  # noqa: E402

from cxr_lightning.cli.configs import shipped_config  # noqa: E402
from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.data.options import DataOptions  # noqa: E402
from cxr_lightning.evaluation.paper_results import ALL_RUNS, PAPER_RUNS  # noqa: E402

# Only these init arguments change what a step computes; the rest (lr, scheduler, loss weights) do not.
SHAPE_ARGS = ("high_res_stem", "freeze_backbone", "metadata_hidden", "in_channels", "channels")


def row_spec(row: str, batch_size: int | None) -> dict:
    """What a row trains, read from its shipped config."""
    path = shipped_config(f"{row}.yaml")
    if path is None:
        raise SystemExit(f"no shipped config for row {row!r}")
    config = yaml.safe_load(path.read_text())
    model, data = config["model"], DataOptions.from_config(config["data"])  # a config of either layout, defaults filled
    data = replace(data, images=data.images.resolved())
    init = {k: v for k, v in (model.get("init_args") or {}).items() if k in SHAPE_ARGS}
    batch = batch_size or int(data.loading.batch_size)
    return {
        "row": row,
        "class_path": model["class_path"],
        "init": init,
        "size": int(data.images.size),
        "channels": int(data.images.channels),
        "encoding": data.metadata.encoding,
        "batch": batch,
        "eval_batch": batch_size or int(data.loading.eval_batch_size or batch),
        "epochs": int(config["trainer"].get("max_epochs", 20)),
    }


def build_model(spec: dict):
    """The row's module with random weights: no torchvision or hub download."""
    from cxr_lightning.data.encoding import MetadataEncoder

    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    init = dict(spec["init"], metadata_dim=MetadataEncoder(spec["encoding"]).width)
    if name == "ResNet50Classifier":
        init["weights"] = None
    elif name == "BEiTClassifier":
        init.update(pretrained=None, config={**BEIT_BASE, "image_size": spec["size"]})
    return cls(**init)


def measure_rates(spec: dict, args: argparse.Namespace) -> dict:
    """Training and evaluation images/s of one row's model (run in a fresh process)."""
    torch.manual_seed(0)
    rates = {}
    for mode, batch_size, timer in (("train", spec["batch"], training_seconds), ("eval", spec["eval_batch"], inference_seconds)):
        model = build_model(spec)
        metadata_dim = model.hparams.metadata_dim
        batch = synthetic_batch(batch_size, spec["channels"], spec["size"], metadata_dim, args)
        rates[mode] = batch_size * args.steps / timer(model, batch, args, args.steps)
        del model, batch
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rates


def split_sizes() -> dict[str, int]:
    """Images per part of the paper split, from the packaged metadata and lists."""
    from cxr_lightning.data.metadata import find_image_list, read_metadata
    from cxr_lightning.data.splits import make_split

    meta = read_metadata(quiet=True)
    split = make_split("paper", meta, find_image_list(None, "train_val_list.txt"), find_image_list(None, "test_list.txt"))
    return {part: len(split.part(part)) for part in ("train", "val", "test")}


def row_hours(spec: dict, rates: dict, sizes: dict, epochs: int) -> float:
    per_epoch = sizes["train"] / rates["train"] + sizes["val"] / rates["eval"]
    return (epochs * per_epoch + (sizes["val"] + sizes["test"]) / rates["eval"]) / 3600


def project(args: argparse.Namespace) -> list[str]:
    """Measure every distinct model shape once, then print one line per row and the totals."""
    rows = args.rows or (ALL_RUNS if args.all else PAPER_RUNS)
    specs = [row_spec(row, args.batch_size) for row in rows]
    sizes = split_sizes()
    ctx = multiprocessing.get_context("spawn")
    measured: dict[str, dict] = {}
    for spec in specs:
        key = repr({k: spec[k] for k in ("class_path", "init", "size", "channels", "batch", "eval_batch")})
        if key not in measured:
            with ctx.Pool(1) as pool:  # a fresh process per model: no memory or compile cache carried over
                measured[key] = pool.apply(measure_rates, (spec, args))
        spec["rates"] = measured[key]
    lines = ["| row | model | input | batch | epochs | train img/s | eval img/s | hours |", "|---|---|---|---:|---:|---:|---:|---:|"]
    as_configured = at_fixed = 0.0
    for spec in specs:
        epochs = args.epochs or spec["epochs"]
        hours = row_hours(spec, spec["rates"], sizes, epochs)
        as_configured += row_hours(spec, spec["rates"], sizes, spec["epochs"])
        at_fixed += row_hours(spec, spec["rates"], sizes, 20)
        model = spec["class_path"].rpartition(".")[2] + ("+stem" if spec["init"].get("high_res_stem") else "")
        model += " (frozen)" if spec["init"].get("freeze_backbone") else ""
        lines.append(f"| {spec['row']} | {model} | {spec['channels']}x{spec['size']}x{spec['size']} | {spec['batch']} | {epochs} | "
                     f"{spec['rates']['train']:.1f} | {spec['rates']['eval']:.1f} | {hours:.2f} |")  # fmt: skip
    lines += [
        "",
        f"images per epoch: train {sizes['train']:,}, val {sizes['val']:,}; test {sizes['test']:,} (paper split)",
        f"all {len(specs)} rows, epochs as configured: {as_configured:.1f} h ({as_configured / 24:.1f} days)",
        f"all {len(specs)} rows, 20 epochs each: {at_fixed:.1f} h ({at_fixed / 24:.1f} days)",
    ]
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", nargs="+", help="row names (default: the paper's 9 rows)")
    parser.add_argument("--all", action="store_true", help="the imbalance rows too")
    parser.add_argument("--epochs", type=int, help="epochs for every row in the per-row column (default: each config's)")
    parser.add_argument("--batch_size", type=int, help="measure at this batch size instead of each config's (small CPUs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("32", "bf16", "16"), default="32")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)


def main() -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    started = time.perf_counter()
    lines = project(args)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nreproduction wall time on {device}; torch {torch.__version__}; precision {args.precision}"
          f"{', channels-last' if args.channels_last else ''}{', compiled' if args.compile else ''}; "
          f"{args.warmup} warm-up + {args.steps} timed steps per mode; {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    print("\n".join(lines))
    print(f"\n(measured in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
