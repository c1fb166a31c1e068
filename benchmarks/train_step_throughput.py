"""Training-step throughput of each model on synthetic tensors: images/s and peak memory.

One step = forward, weighted BCE loss, backward and an Adam update, exactly the modules the
CLI trains (pretrained weights are not needed for speed, so backbones start random).

    python benchmarks/train_step_throughput.py                       # CPU, 64x64, batch 16
    python benchmarks/train_step_throughput.py --device cuda --image_size 224 --batch_size 128 --precision bf16
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import time

import torch

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.models import BackboneClassifier, BaselineCNN, BEiTClassifier, ResNet50Classifier

#: named backbones measured beside the paper's three: CheXNet's DenseNet-121, a timm model, a torchxrayvision model
NAMED = {"densenet121": "torchvision/densenet121", "convnext_tiny": "timm/convnext_tiny", "xrv_densenet121": "xrv/densenet121-res224-all"}
BEIT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "patch_size": 16}


def build(name: str, image_size: int, **options):
    """(model, input channels, input size) of a named model; ``options`` go to the LightningModule."""
    options.setdefault("metadata_dim", 3)
    if name == "cnn":
        return BaselineCNN(**options), 3, image_size
    if name == "resnet50":
        return ResNet50Classifier(weights=None, **options), 3, image_size
    if name == "resnet50_stem":
        # The stem turns a 1024x1024 grey image into 244x244; we feed 4x the image size here.
        return ResNet50Classifier(weights=None, high_res_stem=True, **options), 1, image_size * 4
    if name == "beit_base":
        return BEiTClassifier(config={**BEIT_BASE, "image_size": image_size}, **options), 3, image_size
    if name in NAMED:
        model = BackboneClassifier(backbone=NAMED[name], weights=None, **options)
        return model, model.input_facts.channels, image_size
    raise ValueError(name)


def synthetic_batch(batch_size: int, channels: int, size: int, metadata_dim: int, args: argparse.Namespace):
    """Random images, metadata and labels already on the device (input costs nothing)."""
    device = torch.device(args.device)
    images = torch.randn(batch_size, channels, size, size, device=device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    metadata = torch.randn(batch_size, metadata_dim, device=device)
    labels = (torch.rand(batch_size, 15, device=device) < 0.1).float()
    return images, metadata, labels


def _timed(step, args: argparse.Namespace, steps: int) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``args.warmup`` untimed ones."""
    cuda = args.device.startswith("cuda")
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def prepare(model: torch.nn.Module, args: argparse.Namespace):
    """The model on the device, channels-last and compiled as asked; returns (model, callable)."""
    model.to(torch.device(args.device))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, (torch.compile(model) if args.compile else model)


def _autocast(args: argparse.Namespace):
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[args.precision]
    return torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None)


def training_seconds(model, batch, args: argparse.Namespace, steps: int) -> float:
    """Seconds for ``steps`` training steps: forward, the model's loss, backward, an Adam update."""
    model, forward = prepare(model, args)
    model.train()
    images, metadata, labels = batch
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(args):
            logits = forward(images, metadata)
        loss = model.criterion(logits.float(), labels)
        loss.backward()
        optimizer.step()

    return _timed(step, args, steps)


def inference_seconds(model, batch, args: argparse.Namespace, steps: int) -> float:
    """Seconds for ``steps`` evaluation batches (forward and sigmoid, no gradients), as validate/test run."""
    model, forward = prepare(model, args)
    model.eval()
    images, metadata, _ = batch

    @torch.inference_mode()
    def step() -> None:
        with _autocast(args):
            torch.sigmoid(forward(images, metadata).float())

    return _timed(step, args, steps)


def peak_mib(args: argparse.Namespace) -> float:
    """CUDA max allocated on a GPU; on the CPU the max RSS of this (fresh) process."""
    if args.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model, channels, size = build(name, args.image_size)
    batch = synthetic_batch(args.batch_size, channels, size, 3, args)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    elapsed = training_seconds(model, batch, args, args.steps)
    return {
        "model": name,
        "params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
        "input": f"{channels}x{size}x{size}",
        "images/s": args.batch_size * args.steps / elapsed,
        "ms/step": 1000 * elapsed / args.steps,
        "peak MiB": peak_mib(args),
    }


def main() -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet50", "resnet50_stem", "beit_base", *NAMED])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--precision", choices=("32", "bf16", "16"), default="32")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    # One fresh process per model, so each peak-memory figure is that model's alone.
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for name in args.models:
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(measure, (name, args)))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"\ntrain-step throughput on {device}; torch {torch.__version__}; batch {args.batch_size}, precision {args.precision}"
          f"{', channels-last' if args.channels_last else ''}{', compiled' if args.compile else ''}; peak memory: "
          f"{'CUDA max allocated' if args.device.startswith('cuda') else 'max RSS of a process running only that model'}\n")  # fmt: skip
    print("| model | params (M) | input | images/s | ms/step | peak MiB |")
    print("|---|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['params (M)']:.1f} | {r['input']} | {r['images/s']:.1f} | {r['ms/step']:.0f} | {r['peak MiB']:.0f} |")


if __name__ == "__main__":
    main()
