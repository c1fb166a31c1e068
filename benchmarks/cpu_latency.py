"""Batch-1 CPU inference latency of ResNet-50 with metadata: PyTorch eager vs ONNX Runtime.

The model is what ``cxr-lightning export`` writes (backbone + fusion head + sigmoid, see
:class:`cxr_lightning.inference.export.ProbabilityModel`), with random weights (latency does not depend
on the weights once denormals are flushed): a ``(1, 3, S, S)`` image and ``(1, 5)`` metadata in,
15 probabilities out. Denormal floats are flushed to zero in both runtimes
(``torch.set_flush_denormal(True)``; ORT ``session.set_denormal_as_zero``), both use the same
number of intra-op threads, and each row is the median / p90 of ``--runs`` timed calls after
``--warmup`` untimed ones, taken in ``--rounds`` alternating blocks per runtime.

    python benchmarks/cpu_latency.py                      # 2 threads, 224x224, 50 runs
    python benchmarks/cpu_latency.py --threads 4 --runs 200 --opset 18
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr_lightning.cli.parser import CommandParser
from cxr_lightning.inference.export import ProbabilityModel, _export_onnx
from cxr_lightning.models import ResNet50Classifier

TARGET_MS = 60.0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for both runtimes (default 2)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per runtime, spread over the rounds")
    parser.add_argument("--rounds", type=int, default=5, help="blocks per runtime, alternating runtimes (default 5)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17: legacy exporter, 18+: torch.export-based)")
    parser.add_argument("--channels_last", action="store_true", help="also time eager PyTorch with channels-last memory format")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    classifier = ResNet50Classifier(weights=None, metadata_dim=5).eval()
    model = ProbabilityModel(classifier).eval()
    size = args.image_size
    image = torch.randn(1, 3, size, size)
    metadata = torch.tensor([[0.2, 1.0, 0.0, 1.0, 0.0]])

    candidates: list[tuple[str, object]] = []
    with torch.inference_mode():
        reference = model(image, metadata).numpy()
    candidates.append(("PyTorch eager", lambda: model(image, metadata)))
    if args.channels_last:
        model_cl = ProbabilityModel(ResNet50Classifier(weights=None, metadata_dim=5).eval()).eval()
        model_cl.load_state_dict(model.state_dict())
        model_cl = model_cl.to(memory_format=torch.channels_last)
        image_cl = image.contiguous(memory_format=torch.channels_last)
        candidates.append(("PyTorch eager, channels-last", lambda: model_cl(image_cl, metadata)))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.onnx"
        start = time.perf_counter()
        exporter = _export_onnx(model, (image.repeat(2, 1, 1, 1), metadata.repeat(2, 1)), path, args.opset, "auto")
        export_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"image": image.numpy(), "metadata": metadata.numpy()}
    output = session.run(["probabilities"], feeds)[0]
    candidates.append((f"ONNX Runtime {ort.__version__} (opset {args.opset}, {exporter} exporter)", lambda: session.run(["probabilities"], feeds)))

    # Blocks of runs, runtime after runtime, for --rounds rounds: each runtime sees the same load from
    # other processes over time, and a pause before each block lets the other runtime's spinning
    # worker threads (OpenMP, ORT's thread pool) go idle so they do not steal the cores.
    rows: list[tuple[str, list[float]]] = [(name, []) for name, _ in candidates]
    per_round = [args.runs // args.rounds + (1 if r < args.runs % args.rounds else 0) for r in range(args.rounds)]
    with torch.inference_mode():
        for runs in per_round:
            for (_, fn), (_, times) in zip(candidates, rows):
                time.sleep(0.3)
                for _ in range(max(1, args.warmup // args.rounds)):
                    fn()
                for _ in range(runs):
                    start = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - start) * 1000.0)
    max_diff = float(np.abs(output - reference).max())
    load_after = os.getloadavg()[0]

    print(
        f"\nbatch-1 latency, ResNet-50 + metadata head + sigmoid, {size}x{size}, {args.threads} threads, denormals flushed; "
        f"{args.runs} runs after {args.warmup} warm-up\nCPU: {cpu_name()}; torch {torch.__version__}; "
        f"ONNX export {export_s:.1f} s; max |ORT - PyTorch| probability diff {max_diff:.1e}\n"
        f"1-minute load average {load_before:.2f} before, {load_after:.2f} after ({os.cpu_count()} CPUs): "
        "other processes competing for the cores inflate the numbers\n"
    )
    print("| runtime | median ms | p90 ms | mean ms | min ms | images/s (median) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, times in rows:
        median = statistics.median(times)
        print(f"| {name} | {median:.1f} | {percentile(times, 90):.1f} | {statistics.fmean(times):.1f} | {min(times):.1f} | {1000 / median:.1f} |")
    ort_median = statistics.median(rows[-1][1])
    verdict = "meets" if ort_median <= TARGET_MS else "misses"
    print(f"\nONNX Runtime median {ort_median:.1f} ms {verdict} the {TARGET_MS:.0f} ms target.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
