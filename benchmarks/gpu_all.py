"""Every GPU measurement of the project in one run (meant to take under 8 minutes on one H100), one summary at the end.

1. Training-step throughput and peak memory on synthetic tensors: ResNet-50 and BEiT-base at
   224x224, bf16, channels-last, eager and ``torch.compile`` (targets on one H100: ResNet-50
   >= 5,000 images/s, BEiT-base >= 2,800 images/s); and, eager, the other backbones beside them:
   DenseNet-121 (CheXNet's), timm ConvNeXt-Tiny and torchxrayvision's DenseNet-121 (one channel).
2. The full pipeline: ``Trainer.fit`` through the cached DataModule (uint8 cache, workers,
   pinned memory, augmentation on the GPU) against the same model fed one batch already on the
   GPU (target: a ratio of at least 0.90), for ResNet-50 and BEiT-base.
3. The wall time of the whole reproduction: every row's own model, size and batch size timed
   in training and evaluation, projected over the paper split (``reproduction_time.py``).

    python benchmarks/gpu_all.py                  # on a GPU machine
    python benchmarks/gpu_all.py --quick          # a CPU dry run with tiny settings (checks the script)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cxr_lightning.cli.parser import CommandParser

sys.path.insert(0, str(Path(__file__).parent))
from pipeline_throughput import cached_dataset, pipeline_rates  # noqa: E402
from pipeline_throughput import table as pipeline_table  # noqa: E402
from reproduction_time import project  # noqa: E402
from train_step_throughput import measure  # noqa: E402

TARGETS = {"resnet50": 5000, "beit_base": 2800}
#: Other backbones, eager only (no target): model -> batch on a GPU.
OTHER_BACKBONES = {"densenet121": 256, "convnext_tiny": 256, "xrv_densenet121": 256}


def settings(quick: bool, device: str) -> argparse.Namespace:
    """Full settings on a GPU; tiny ones for the CPU dry run."""
    return argparse.Namespace(
        device=device,
        image_size=64 if quick else 224,
        precision="32" if quick else "bf16",
        channels_last=not quick,
        compile=False,
        warmup=1 if quick else 10,
        steps=2 if quick else 30,
        workers=2 if quick else min(8, os.cpu_count() or 1),
        images=64 if quick else 4096,
    )


def main() -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU settings, to check the script")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    cli = parser.parse_args()
    quick = cli.quick or cli.device == "cpu"
    args = settings(quick, cli.device)
    batches = {"resnet50": 16 if quick else 256, "beit_base": 8 if quick else 128}
    started, summary = time.perf_counter(), []

    # 1. synthetic tensors, eager and compiled, each in a fresh process (clean peak memory, no compile cache)
    steps_rows = []
    ctx = multiprocessing.get_context("spawn")
    for name, batch in batches.items():
        for compiled in (False,) if quick else (False, True):
            run = argparse.Namespace(**vars(args), batch_size=batch)
            run.compile = compiled
            with ctx.Pool(1) as pool:
                steps_rows.append(pool.apply(measure, (name, run)) | {"compiled": compiled, "batch": batch})
    for name, batch in OTHER_BACKBONES.items():
        run = argparse.Namespace(**vars(args), batch_size=8 if quick else batch)
        with ctx.Pool(1) as pool:
            steps_rows.append(pool.apply(measure, (name, run)) | {"compiled": False, "batch": run.batch_size})
    summary += [f"### Training step on synthetic tensors ({args.image_size}x{args.image_size}, {args.precision}, channels-last {args.channels_last})", "",
                "| model | compiled | batch | images/s | target | peak MiB |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in steps_rows:
        target = f">= {TARGETS[r['model']]:,}" if not quick and r["model"] in TARGETS else "-"
        summary.append(f"| {r['model']} | {r['compiled']} | {r['batch']} | {r['images/s']:.0f} | {target} | {r['peak MiB']:.0f} |")

    # 2. the cached pipeline against on-device input (in this process: DataLoader workers need a non-daemon parent)
    pipe_rows = []
    with tempfile.TemporaryDirectory() as workdir:
        root = cached_dataset(Path(workdir) / "nih", args.images, args.image_size)
        for name, batch in batches.items():
            run = argparse.Namespace(**vars(args), batch_size=batch)
            run.steps = 3 if quick else 60
            pipe_rows.append({"model": name} | pipeline_rates(name, root, run))
    summary += ["", f"### Full pipeline from the uint8 cache ({args.workers} workers; target: ratio >= 0.90)", ""]
    summary += pipeline_table(pipe_rows, args)

    # 3. the reproduction's wall time, every row at its own size and batch
    repro = argparse.Namespace(**vars(args), rows=None, all=False, epochs=None, batch_size=2 if quick else None)
    repro.warmup, repro.steps = (1, 1) if quick else (5, 15)
    summary += ["", "### Wall time of the whole reproduction (input assumed to keep up; see the pipeline ratio)", ""]
    summary += project(repro)

    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (dry run, tiny settings)"
    print(f"\n## GPU benchmarks on {device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
          f"{time.perf_counter() - started:.0f} s in all\n")  # fmt: skip
    print("\n".join(summary))


if __name__ == "__main__":
    main()
