"""Every GPU measurement of the project in one run (under 8 minutes on one H100), one table at the end.

1. Training-step throughput and peak memory on synthetic tensors: ResNet-50 and BEiT-base at
   224x224, bf16, channels-last, eager and ``torch.compile``.
2. The full pipeline: a synthetic NIH-layout dataset at 224 px, ``cxr-lightning data prepare``
   into the uint8 cache, then ``Trainer.fit`` through the DataModule (cache, DataLoader workers,
   pinned memory, augmentation on the GPU) against the same model fed a fixed batch that already
   sits on the GPU. Target: the pipeline within 10% of the synthetic input.

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

sys.path.insert(0, str(Path(__file__).parent))
from train_step_throughput import measure  # noqa: E402


class StepTimer:
    """Images/s of training steps after ``warmup`` steps (a Lightning callback)."""

    def __init__(self, warmup: int):
        import lightning as L

        class _Timer(L.Callback):
            def on_train_batch_start(inner, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    self.start, self.images = time.perf_counter(), 0

            def on_train_batch_end(inner, trainer, pl_module, outputs, batch, batch_idx):
                if trainer.global_step > warmup:
                    self.images += len(batch["labels"])

        self.callback = _Timer()
        self.start, self.images = None, 0

    def rate(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return self.images / (time.perf_counter() - self.start)


def pipeline_rates(args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """Images/s of fit through the cached DataModule vs a fixed on-device batch, same model and settings."""
    import lightning as L

    from cxr_lightning.cli import main as cli
    from cxr_lightning.data import ChestXrayDataModule
    from cxr_lightning.data.synthetic import generate_synthetic_dataset
    from cxr_lightning.models import ResNet50Classifier

    root = workdir / "nih"
    generate_synthetic_dataset(root, args.pipeline_images, args.image_size, seed=0, progress=False)
    cli(["data", "prepare", "--root", str(root), "--size", str(args.image_size), "--no-progress"])
    dm = ChestXrayDataModule(data_root=root, split="patient", fractions=(0.9, 0.05, 0.05), image_size=args.image_size,
                             batch_size=args.batch_size, num_workers=args.workers, pin_memory=True, persistent_workers=True,
                             prefetch_factor=4, image_cache="required")  # fmt: skip
    precision = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}[args.precision]
    rates = {}
    for source in ("cache pipeline", "on-device synthetic batch"):
        timer = StepTimer(args.warmup)
        model = ResNet50Classifier(weights=None, channels_last=True, label_names=dm.label_names, metadata_dim=dm.metadata_dim)
        trainer = L.Trainer(accelerator=args.device, devices=1, precision=precision, max_steps=args.warmup + args.pipeline_steps,
                            limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            callbacks=[timer.callback])  # fmt: skip
        if source == "cache pipeline":
            trainer.fit(model, datamodule=dm)
        else:
            dm.setup("fit")
            fixed = next(iter(dm.train_dataloader()))
            fixed = dm.on_after_batch_transfer(trainer.strategy.batch_to_device(fixed, torch.device(args.device)), 0)
            loader = _Repeat(fixed, args.warmup + args.pipeline_steps + 1)
            trainer.fit(model, train_dataloaders=loader)
        rates[source] = timer.rate()
    return rates


class _Repeat(torch.utils.data.IterableDataset):
    """The same (already on-device) batch, ``n`` times: input costs nothing."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self):
        return self.n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU settings, to check the script")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    quick = args.quick or args.device == "cpu"
    args.image_size = 64 if quick else 224
    args.precision = "32" if quick else "bf16"
    args.channels_last, args.warmup, args.steps = not quick, (1 if quick else 10), (2 if quick else 30)
    args.workers = 2 if quick else min(8, os.cpu_count() or 1)
    args.pipeline_images, args.pipeline_steps = (64, 3) if quick else (4096, 60)
    started = time.perf_counter()
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for name, batch in (("resnet50", 16 if quick else 256), ("beit_base", 8 if quick else 128)):
        for compiled in (False,) if quick else (False, True):
            args.batch_size, args.compile = batch, compiled
            with ctx.Pool(1) as pool:  # a fresh process per measurement: clean peak memory
                rows.append(pool.apply(measure, (name, args)) | {"compiled": compiled, "batch": batch})
    args.batch_size, args.compile = (16 if quick else 256), False
    with tempfile.TemporaryDirectory() as workdir:
        pipeline = pipeline_rates(args, Path(workdir))
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (dry run)"
    print(f"\n## GPU benchmarks on {device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f} s in all\n")
    print(f"Training step on synthetic tensors, {args.image_size}x{args.image_size}, precision {args.precision}, channels-last {args.channels_last}:\n")
    print("| model | compiled | batch | images/s | peak MiB |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['compiled']} | {r['batch']} | {r['images/s']:.0f} | {r['peak MiB']:.0f} |")
    ratio = pipeline["cache pipeline"] / pipeline["on-device synthetic batch"]
    print(f"\nFull pipeline (ResNet-50, Trainer.fit, batch {args.batch_size}, {args.workers} workers):\n")
    print("| input | images/s |")
    print("|---|---:|")
    for source, rate in pipeline.items():
        print(f"| {source} | {rate:.0f} |")
    print(f"\ncache pipeline / synthetic input = {ratio:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
