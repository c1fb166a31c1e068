"""Training throughput through the full DataModule (uint8 cache) against input that costs nothing.

For each model: a synthetic NIH-layout dataset is written at the image size, ``cxr-lightning
data prepare`` builds the uint8 cache from it, and ``Trainer.fit`` runs through the
ChestXrayDataModule (cache, DataLoader workers, pinned memory, augmentation and normalisation
on the device after transfer). The same model and Trainer settings are then fed one fixed batch
that already sits on the device. The ratio says how much the input pipeline costs (target:
the pipeline within 10% of the on-device input, a ratio of at least 0.90).

    python benchmarks/pipeline_throughput.py                                   # CPU: CNN, 64x64
    python benchmarks/pipeline_throughput.py --device cuda --models resnet50 beit_base --image_size 224 --batch_size 256 --precision bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cxr_lightning.cli.parser import CommandParser

sys.path.insert(0, str(Path(__file__).parent))
from train_step_throughput import build  # noqa: E402

PRECISION = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true"}
PIPELINE_MODELS = ("cnn", "resnet50", "beit_base")  # the stem row needs a 1024 px cache; not here


class StepTimer:
    """Images/s of the training steps after ``warmup`` steps (a Lightning callback).

    The clock stops at the end of the last step (after a device sync), so Lightning's teardown
    and the DataLoader workers' shutdown are not counted.
    """

    def __init__(self, warmup: int, last_step: int):
        import lightning as L

        def sync() -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        class _Timer(L.Callback):
            def on_train_batch_start(inner, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup and self.start is None:
                    sync()
                    self.start, self.images = time.perf_counter(), 0

            def on_train_batch_end(inner, trainer, pl_module, outputs, batch, batch_idx):
                if self.start is not None and self.end is None:
                    self.images += len(batch["labels"])
                    if trainer.global_step >= last_step:
                        sync()
                        self.end = time.perf_counter()

        self.callback = _Timer()
        self.start: float | None = None
        self.end: float | None = None
        self.images = 0

    def rate(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("the timed steps did not all run")
        return self.images / (self.end - self.start)


class _Repeat(torch.utils.data.IterableDataset):
    """The same (already on-device) batch, ``n`` times: input costs nothing."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return (self.batch for _ in range(self.n))

    def __len__(self):
        return self.n


def cached_dataset(root: Path, num_images: int, image_size: int) -> Path:
    """A synthetic NIH-layout dataset with its uint8 cache, built once per root."""
    from cxr_lightning.cli import main as cli
    from cxr_lightning.data.synthetic import generate_synthetic_dataset

    if not (root / "images").is_dir():
        generate_synthetic_dataset(root, num_images, image_size, seed=0, progress=False)
        cli(["data", "prepare", "--root", str(root), "--size", str(image_size), "--no_progress"])
    return root


def pipeline_rates(name: str, root: Path, args: argparse.Namespace) -> dict[str, float]:
    """Images/s of ``Trainer.fit`` for one model: through the cached DataModule, then from a fixed on-device batch."""
    import lightning as L

    from cxr_lightning.data import ChestXrayDataModule
    from cxr_lightning.data.options import ImageOptions, LoadingOptions, SplitOptions

    loading = LoadingOptions(batch_size=args.batch_size, num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
                             persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers else None)
    dm = ChestXrayDataModule(data_root=root, split=SplitOptions(name="patient", fractions=(0.9, 0.05, 0.05)),
                             images=ImageOptions(size=args.image_size, cache="required"), loading=loading)  # fmt: skip
    dm.setup("fit")
    result = {}
    for source in ("pipeline", "on-device"):
        torch.manual_seed(0)
        model, _, _ = build(name, args.image_size, metadata_dim=dm.metadata_dim, channels_last=args.channels_last, compile=args.compile)
        timer = StepTimer(args.warmup, args.warmup + args.steps)
        device = torch.device(args.device)
        devices = [device.index or 0] if device.type == "cuda" else 1  # the GPU named by --device (cuda:1), not GPU 0
        trainer = L.Trainer(accelerator=device.type, devices=devices, precision=PRECISION[args.precision],
                            max_steps=args.warmup + args.steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[timer.callback])  # fmt: skip
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        if source == "pipeline":
            trainer.fit(model, datamodule=dm)
        else:
            fixed = next(iter(dm.train_dataloader()))
            fixed = dm.on_after_batch_transfer(trainer.strategy.batch_to_device(fixed, torch.device(args.device)), 0)
            trainer.fit(model, train_dataloaders=_Repeat(fixed, args.warmup + args.steps + 1))
        result[source] = timer.rate()
        if args.device.startswith("cuda"):
            result[f"{source} peak MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def table(rows: list[dict], args: argparse.Namespace) -> list[str]:
    cuda = args.device.startswith("cuda")
    lines = ["| model | on-device input img/s | cache pipeline img/s | pipeline / on-device | peak MiB (pipeline) |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        peak = f"{r['pipeline peak MiB']:.0f}" if cuda else "-"
        lines.append(f"| {r['model']} | {r['on-device']:.1f} | {r['pipeline']:.1f} | {r['pipeline'] / r['on-device']:.2f} | {peak} |")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", choices=PIPELINE_MODELS, default=["cnn"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--precision", choices=tuple(PRECISION), default="32")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--images", type=int, default=2000, help="synthetic images in the cached dataset")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)


def main() -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        root = cached_dataset(Path(workdir) / "nih", args.images, args.image_size)
        rows = [{"model": name} | pipeline_rates(name, root, args) for name in args.models]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nfull-pipeline throughput on {device}; torch {torch.__version__}; {args.image_size}x{args.image_size}, batch "
          f"{args.batch_size}, {args.workers} workers, precision {args.precision}{', channels-last' if args.channels_last else ''}"
          f"{', compiled' if args.compile else ''}; {args.warmup} warm-up + {args.steps} timed steps; {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    print("\n".join(table(rows, args)))


if __name__ == "__main__":
    main()
