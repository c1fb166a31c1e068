"""Exporting a checkpoint for deployment: ONNX or TorchScript, with a JSON sidecar.

The exported model is :class:`ProbabilityModel`: the classifier's backbone and fusion head
followed by a sigmoid. It takes

* ``image``: ``(B, C, S, S)`` float32, already preprocessed (grey in [0, 1], resized to S x S,
  replicated to C channels, normalised with the sidecar's ``mean``/``std``);
* ``metadata``: ``(B, M)`` float32, encoded as the sidecar's ``metadata_encoder`` says;

and returns ``probabilities`` ``(B, L)``, one per label of ``label_names``. The batch axis is
dynamic. A label is predicted when its probability is ``>=`` its entry of ``thresholds`` (tuned on
validation during training). A model without metadata (``metadata_dim: 0``) ignores ``metadata``;
its ONNX graph may then have no ``metadata`` input (the sidecar's ``inputs`` lists what it has).

The sidecar is written next to the model as ``<file>.json`` (``model.onnx`` ->
``model.onnx.json``) and holds everything a deployer needs to prepare inputs without this
package: label names, thresholds, image size and channels, normalisation, the metadata encoder's
state with a formula for each feature and a worked example, and the max abs difference between
the exported model and PyTorch measured right after export.

ONNX: ``opset < 18`` uses PyTorch's TorchScript-based exporter (deprecated since PyTorch 2.9 but
the one that still writes opset 17); ``opset >= 18`` uses the ``torch.export``-based exporter
(needs ``onnxscript``). TorchScript is traced (``torch.jit`` is deprecated in recent PyTorch; its
warnings are silenced here).
"""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cxr_lightning.checkpoint import load_classifier
from cxr_lightning.data.encoding import MetadataEncoder, metadata_frame
from cxr_lightning.data.transforms import normalization_stats

__all__ = ["ExportResult", "ProbabilityModel", "export_model", "metadata_feature_formulas", "sidecar_path"]

ExportFormat = Literal["onnx", "torchscript"]
INPUT_NAMES = ("image", "metadata")
OUTPUT_NAME = "probabilities"
#: metadata rows encoded in the sidecar's worked example
EXAMPLE_METADATA = (
    {"age": 58.0, "sex": "M", "view": "PA"},
    {"age": 34.0, "sex": "F", "view": "AP"},
    {"age": None, "sex": "", "view": ""},
)


class ProbabilityModel(nn.Module):
    """``sigmoid(head(backbone(image), metadata))``: a classifier's inference path, nothing else."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.backbone = classifier.backbone
        self.head = classifier.head

    def forward(self, image: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.backbone(image), metadata))


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    format: str
    #: max |exported - PyTorch| over a random batch of 3; None when not verified
    max_abs_diff: float | None
    opset: int | None = None


def sidecar_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".json")


def metadata_feature_formulas(encoder: MetadataEncoder) -> dict[str, str]:
    """How each feature of the encoder is computed, in words a deployer can implement."""
    mean, std = encoder.age_mean, encoder.age_std
    age_z = f"(age - {mean!r}) / {std!r}; an unknown age counts as {mean!r} (so 0)"
    formulas = {
        "age_z": age_z,
        "age_over_100": f"clip(age, 0, 100) / 100; an unknown age counts as {mean!r}",
        "sex_M": "1 if sex == 'M' else 0",
        "sex_F": "1 if sex == 'F' else 0" if encoder.scheme != "cnn" else "1 if sex == 'F', 0 if sex == 'M', 0.5 if unknown",
        "view_PA": "1 if view == 'PA' else 0",
        "view_AP": "1 if view == 'AP' else 0",
    }
    return {name: formulas[name] for name in encoder.feature_names}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the deprecation and tracer warnings of torch.jit / the legacy ONNX exporter / transformers."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


def _export_onnx(wrapper: nn.Module, example: tuple[torch.Tensor, torch.Tensor], out: Path, opset: int, exporter: str) -> str:
    dynamic_axes = {"image": {0: "batch"}, "metadata": {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    common = dict(input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], opset_version=int(opset))
    if exporter == "auto":
        exporter = "dynamo" if opset >= 18 else "legacy"
    with _quiet():
        if exporter == "legacy":
            try:
                torch.onnx.export(
                    wrapper, example, str(out), dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True, **common
                )
                return "legacy"
            except (TypeError, AttributeError, NotImplementedError) as err:  # a PyTorch without the legacy exporter
                print(f"legacy ONNX exporter unavailable ({err}); using the torch.export-based one", file=sys.stderr)
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.onnx.export(
            wrapper, example, dynamo=True, dynamic_shapes={"image": {0: batch}, "metadata": {0: batch}}, verbose=False, **common
        )
        program.save(str(out))
        return "dynamo"


def _verify_onnx(path: Path, wrapper: nn.Module, image: torch.Tensor, metadata: torch.Tensor) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: the ONNX model was not verified (pip install onnxruntime)", file=sys.stderr)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v.numpy() for k, v in (("image", image), ("metadata", metadata)) if k in names}
    exported = session.run([OUTPUT_NAME], feeds)[0]
    with torch.no_grad():
        reference = wrapper(image, metadata).numpy()
    return float(np.abs(exported - reference).max())


def _onnx_facts(path: Path) -> tuple[int | None, dict[str, Any]]:
    try:
        import onnx
    except ImportError:
        return None, {}
    model = onnx.load(str(path), load_external_data=False)
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    def shape(value) -> list:
        return [d.dim_param or int(d.dim_value) for d in value.type.tensor_type.shape.dim]

    facts = {"inputs": {v.name: shape(v) for v in model.graph.input}, "outputs": {v.name: shape(v) for v in model.graph.output}}
    return opset, facts


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    format: ExportFormat = "onnx",
    image_size: int | None = None,
    opset: int = 17,
    exporter: Literal["auto", "legacy", "dynamo"] = "auto",
    verify: bool = True,
    trusted_classes: Sequence[str] = (),
) -> ExportResult:
    """Export ``checkpoint`` to ``out`` (ONNX or TorchScript) and write ``<out>.json`` beside it.

    Args:
        checkpoint: a checkpoint written by ``cxr-lightning fit``.
        out: the model file to write (``model.onnx``, ``model.pt``).
        format: ``onnx`` or ``torchscript``.
        image_size: input side S; default the training image size (other sizes work for the
            CNN/ResNet's global pooling and BEiT's interpolated position embeddings, but are not
            what the model was trained on).
        opset: ONNX opset (17: legacy exporter; 18+: torch.export-based exporter).
        exporter: ONNX exporter, ``auto`` picks by ``opset``.
        verify: run the exported model (ONNX Runtime / TorchScript) on a random batch of 3 and
            record the max abs difference to PyTorch in the result and the sidecar.
        trusted_classes: model class paths outside cxr_lightning the checkpoint may name.
    """
    if format not in ("onnx", "torchscript"):
        raise ValueError(f"unknown export format {format!r}; choose onnx or torchscript")
    model, spec = load_classifier(checkpoint, map_location="cpu", trusted_classes=trusted_classes)
    model.eval()
    wrapper = ProbabilityModel(model).eval()
    size = int(image_size or spec.image_size)
    channels = int(spec.image_channels)
    encoder = spec.metadata_encoder
    metadata_dim = int(model.hparams.metadata_dim)
    generator = torch.Generator().manual_seed(0)
    example_metadata = torch.from_numpy(encoder.encode(metadata_frame(EXAMPLE_METADATA[:2])))
    if example_metadata.shape[1] != metadata_dim:
        example_metadata = torch.zeros(2, metadata_dim)
    example = (torch.randn(2, channels, size, size, generator=generator), example_metadata)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_image = torch.randn(3, channels, size, size, generator=generator)
    check_metadata = torch.randn(3, metadata_dim, generator=generator)
    opset_used: int | None = None
    facts: dict[str, Any] = {}
    verification: dict[str, Any] | None = None
    max_diff: float | None = None
    if format == "onnx":
        used = _export_onnx(wrapper, example, out, opset, exporter)
        opset_used, facts = _onnx_facts(out)
        if verify:
            max_diff = _verify_onnx(out, wrapper, check_image, check_metadata)
            if max_diff is not None:
                import onnxruntime

                verification = {"runtime": f"onnxruntime {onnxruntime.__version__}", "max_abs_diff": max_diff}
        exporter_note = f"torch.onnx.export ({used} exporter)"
    else:
        with _quiet():
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, example, check_trace=False)
            torch.jit.save(traced, str(out))
            if verify:
                loaded = torch.jit.load(str(out), map_location="cpu")
                with torch.no_grad(), torch.jit.optimized_execution(False):
                    max_diff = float((loaded(check_image, check_metadata) - wrapper(check_image, check_metadata)).abs().max())
                verification = {"runtime": f"torch.jit {torch.__version__}", "max_abs_diff": max_diff}
        exporter_note = "torch.jit.trace"
        facts = {
            "inputs": {"image": ["batch", channels, size, size], "metadata": ["batch", metadata_dim]},
            "outputs": {OUTPUT_NAME: ["batch", len(spec.label_names)]},
        }

    mean, std = normalization_stats(spec.normalization, channels)
    example_encoded = encoder.encode(metadata_frame(EXAMPLE_METADATA))
    sidecar = {
        "format": format,
        "file": out.name,
        "exporter": exporter_note,
        "opset": opset_used,
        "inputs": {
            name: {
                "shape": shape,
                "dtype": "float32",
                "description": "preprocessed image, see preprocessing" if name == "image" else "encoded metadata, see metadata_encoder",
            }
            for name, shape in facts.get("inputs", {}).items()
        },
        "outputs": {
            name: {"shape": shape, "dtype": "float32", "description": "sigmoid probability per label"}
            for name, shape in facts.get("outputs", {}).items()
        },
        "label_names": list(spec.label_names),
        "thresholds": [float(t) for t in model.thresholds.tolist()],
        "decision_rule": "label predicted when probability >= its threshold",
        "image_size": size,
        "training_image_size": int(spec.image_size),
        "image_channels": channels,
        "normalization": {"name": spec.normalization, "mean": mean, "std": std},
        "preprocessing": [
            "decode to one grey channel in [0, 1] (8-bit / 255, 16-bit / 65535; DICOM: modality LUT, VOI LUT/window, "
            "display range to [0, 1], MONOCHROME1 inverted)",
            f"resize to {size}x{size}, bilinear with antialiasing (torchvision resize), clamp to [0, 1]",
            f"replicate the grey channel to {channels} channel(s)",
            "per channel: (x - mean[c]) / std[c]",
        ],
        "metadata_encoder": {
            **encoder.state(),
            "width": encoder.width,
            "feature_names": list(encoder.feature_names),
            "features": metadata_feature_formulas(encoder),
            "inputs": "age in years (unknown: missing), sex 'M'/'F'/'' (unknown), view 'PA'/'AP'/'' (unknown)",
            "example": [
                {"input": row, "encoded": [float(v) for v in encoded]} for row, encoded in zip(EXAMPLE_METADATA, example_encoded)
            ],
        },
        "metadata_dim": metadata_dim,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "checkpoint": str(Path(checkpoint)),
        "torch_version": torch.__version__,
        "verification": verification,
    }
    side = sidecar_path(out)
    side.write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    return ExportResult(path=out, sidecar=side, format=format, max_abs_diff=max_diff, opset=opset_used)
