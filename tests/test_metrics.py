"""cxr_lightning.evaluation.metrics against scikit-learn (the paper's definitions) and brute force."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from cxr_lightning.data.labels import LABELS, NO_FINDING
from cxr_lightning.evaluation.metrics import (
    MACRO_METRICS,
    PER_LABEL_COLUMNS,
    EpochPredictions,
    PredictionCollector,
    best_f1_thresholds,
    classification_metrics,
    format_metrics_table,
    per_label_table,
)

TOLERANCE = 1e-6
NO_FINDING_COLUMN = LABELS.index(NO_FINDING)
# Prevalences shaped like NIH ChestX-ray14: some ~0.5 % labels (Hernia), "No Finding" ~54 %.
PREVALENCE = [0.10, 0.025, 0.04, 0.02, 0.12, 0.022, 0.015, 0.005, 0.18, 0.05, 0.54, 0.056, 0.03, 0.005, 0.047]


def make_predictions(n: int, seed: int, decimals: int | None = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 15)`` float32 probs (rounded to ``decimals`` to create ties) and int64 0/1 targets."""
    g = torch.Generator().manual_seed(seed)
    prevalence = torch.tensor(PREVALENCE)
    targets = (torch.rand(n, len(LABELS), generator=g) < prevalence).long()
    # Informative but noisy scores; label strength varies so some labels rarely cross 0.5.
    strength = torch.linspace(0.1, 0.6, len(LABELS))
    noise = torch.rand(n, len(LABELS), generator=g) * (1 - strength)
    probs = noise + strength * targets * torch.rand(n, len(LABELS), generator=g)
    probs[:, 7] *= 0.45  # a rare label never predicted at 0.5: precision's zero-division path
    if decimals is not None:
        probs = torch.round(probs * 10**decimals) / 10**decimals
    return probs.float(), targets


@pytest.fixture(scope="module")
def predictions() -> tuple[torch.Tensor, torch.Tensor]:
    probs, targets = make_predictions(3000, seed=0)
    positives = targets.sum(0)
    assert (positives > 0).all() and (positives < len(targets)).all(), "every label needs both classes for sklearn"
    assert positives.min() <= 20, "the data should include ~0.5 % labels"
    return probs, targets


class MaxDiff:
    """Collect (name, ours, reference) pairs; assert and report the largest absolute difference."""

    def __init__(self) -> None:
        self.worst = (0.0, "")

    def add(self, name: str, ours, reference) -> None:
        ours = np.asarray(ours, dtype=np.float64)
        reference = np.asarray(reference, dtype=np.float64)
        assert ours.shape == reference.shape, name
        assert not np.isnan(ours).any() and not np.isnan(reference).any(), name
        diff = float(np.abs(ours - reference).max()) if ours.size else 0.0
        if diff >= self.worst[0]:
            self.worst = (diff, name)

    def check(self, tolerance: float = TOLERANCE) -> float:
        diff, name = self.worst
        print(f"largest |ours - sklearn| = {diff:.3e} ({name})")
        assert diff < tolerance, f"{name}: {diff}"
        return diff


def compare_with_sklearn(probs: torch.Tensor, targets: torch.Tensor, thresholds, diffs: MaxDiff, tag: str) -> dict:
    metrics = classification_metrics(probs, targets, thresholds, LABELS)
    p, t = probs.double().numpy(), targets.numpy()
    thr = thresholds.numpy() if torch.is_tensor(thresholds) else thresholds
    thr = np.broadcast_to(np.asarray(thr, dtype=np.float64), (p.shape[1],))
    pred = (p >= thr).astype(np.int64)
    sk = {
        "recall": recall_score(t, pred, average=None, zero_division=0),
        "precision": precision_score(t, pred, average=None, zero_division=0),
        "f1": f1_score(t, pred, average=None, zero_division=0),
        "auroc": roc_auc_score(t, p, average=None),
    }
    for key, score in (("recall", recall_score), ("precision", precision_score), ("f1", f1_score)):
        diffs.add(f"{tag} {key}_macro", metrics[f"{key}_macro"], score(t, pred, average="macro", zero_division=0))
    diffs.add(f"{tag} auroc_macro", metrics["auroc_macro"], roc_auc_score(t, p, average="macro"))
    diffs.add(f"{tag} auroc_findings", metrics["auroc_findings"], np.delete(sk["auroc"], NO_FINDING_COLUMN).mean())
    diffs.add(f"{tag} exact_match", metrics["exact_match"], accuracy_score(t, pred))
    for key, values in sk.items():
        diffs.add(f"{tag} per-label {key}", [metrics["per_label"][name][key] for name in LABELS], values)
    assert [metrics["per_label"][name]["positives"] for name in LABELS] == t.sum(0).tolist()
    assert [metrics["per_label"][name]["threshold"] for name in LABELS] == pytest.approx(thr.tolist(), abs=0)
    return metrics


def sklearn_best_f1(scores: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's recipe: precision_recall_curve, F1 per candidate threshold (F1 where p + r = 0 is 0)."""
    precision, recall, thresholds = precision_recall_curve(target, scores)
    precision, recall = precision[:-1], recall[:-1]  # the final (p=1, r=0) point has no threshold
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return f1, thresholds


def brute_force_best_f1(scores: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Every distinct score as threshold; maximal F1, ties to the larger threshold."""
    best = (-1.0, -math.inf)
    for threshold in np.unique(scores):
        pred = scores >= threshold
        tp = int((pred & (target == 1)).sum())
        fp = int((pred & (target == 0)).sum())
        fn = int((~pred & (target == 1)).sum())
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0] or (f1 == best[0] and threshold > best[1]):
            best = (f1, float(threshold))
    return best


def f1_at(scores: np.ndarray, target: np.ndarray, threshold: float) -> float:
    return f1_score(target, (scores >= threshold).astype(int), zero_division=0)


# --------------------------------------------------------------------------- classification_metrics


def test_metrics_equal_sklearn(predictions, record_property) -> None:
    probs, targets = predictions
    diffs = MaxDiff()
    at_half = compare_with_sklearn(probs, targets, 0.5, diffs, "threshold 0.5")
    assert at_half["per_label"]["Hernia"]["precision"] == 0.0  # the zero-division path was exercised
    compare_with_sklearn(probs, targets, best_f1_thresholds(probs, targets), diffs, "tuned")
    random_thresholds = torch.rand(len(LABELS), generator=torch.Generator().manual_seed(1)).double()
    compare_with_sklearn(probs, targets, random_thresholds, diffs, "random")
    # Unrounded scores (no ties) and a bf16 input, which classification_metrics upcasts.
    raw_probs, raw_targets = make_predictions(3000, seed=2, decimals=None)
    compare_with_sklearn(raw_probs, raw_targets, 0.3, diffs, "no ties, threshold 0.3")
    compare_with_sklearn(raw_probs.bfloat16().float(), raw_targets, 0.5, diffs, "bf16 values")
    record_property("max_abs_diff_vs_sklearn", diffs.check())


def test_metrics_types_and_keys(predictions) -> None:
    probs, targets = predictions
    metrics = classification_metrics(probs, targets.float(), torch.full((15,), 0.5), LABELS)
    assert set(metrics) == set(MACRO_METRICS) | {"per_label"}
    assert all(type(metrics[key]) is float for key in MACRO_METRICS)
    assert list(metrics["per_label"]) == list(LABELS)
    for values in metrics["per_label"].values():
        assert list(values) == list(PER_LABEL_COLUMNS)
        assert type(values["positives"]) is int
        assert all(type(values[key]) is float for key in PER_LABEL_COLUMNS if key != "positives")
    # auroc_findings is the 14-finding mean, i.e. differs from the 15-label mean by No Finding's share.
    aurocs = [metrics["per_label"][name]["auroc"] for name in LABELS]
    assert metrics["auroc_macro"] == pytest.approx(np.mean(aurocs), abs=1e-12)
    assert metrics["auroc_findings"] == pytest.approx(np.mean(np.delete(aurocs, NO_FINDING_COLUMN)), abs=1e-12)


def test_metrics_reject_bad_shapes(predictions) -> None:
    probs, targets = predictions
    with pytest.raises(ValueError, match="label names"):
        classification_metrics(probs, targets, 0.5, LABELS[:-1])
    with pytest.raises(ValueError, match="thresholds"):
        classification_metrics(probs, targets, torch.full((14,), 0.5), LABELS)
    with pytest.raises(ValueError):
        classification_metrics(probs, targets[:, :-1], 0.5, LABELS)


def test_single_class_label_is_nan_warned_and_excluded(predictions) -> None:
    probs, targets = predictions
    targets = targets.clone()
    targets[:, LABELS.index("Hernia")] = 0  # no positives
    targets[:, LABELS.index("Edema")] = 1  # no negatives
    with pytest.warns(UserWarning, match=r"AUROC is undefined.*'Edema'.*'Hernia'"):
        metrics = classification_metrics(probs, targets, 0.5, LABELS)
    assert math.isnan(metrics["per_label"]["Hernia"]["auroc"])
    assert math.isnan(metrics["per_label"]["Edema"]["auroc"])
    defined = [i for i, name in enumerate(LABELS) if name not in ("Hernia", "Edema")]
    t, p = targets.numpy(), probs.double().numpy()
    # sklearn: older versions raise, recent ones warn and return NaN per label and for the macro
    # mean; we keep the per-label NaN but average over the defined labels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            assert math.isnan(roc_auc_score(t, p, average="macro"))
        except ValueError:
            pass
    assert metrics["auroc_macro"] == pytest.approx(roc_auc_score(t[:, defined], p[:, defined], average="macro"), abs=TOLERANCE)
    findings = [i for i in defined if i != NO_FINDING_COLUMN]
    reference = roc_auc_score(t[:, findings], p[:, findings], average="macro")
    assert metrics["auroc_findings"] == pytest.approx(reference, abs=TOLERANCE)
    # The threshold metrics still cover all 15 labels, as sklearn's macro average does.
    pred = (p >= 0.5).astype(int)
    assert metrics["f1_macro"] == pytest.approx(f1_score(t, pred, average="macro", zero_division=0), abs=TOLERANCE)
    assert metrics["recall_macro"] == pytest.approx(recall_score(t, pred, average="macro", zero_division=0), abs=TOLERANCE)


def test_all_labels_single_class_gives_nan_macro() -> None:
    probs = torch.rand(10, 3)
    with pytest.warns(UserWarning, match="AUROC is undefined"):
        metrics = classification_metrics(probs, torch.zeros(10, 3), 0.5, ["a", "b", "c"], no_finding=None)
    assert math.isnan(metrics["auroc_macro"]) and math.isnan(metrics["auroc_findings"])
    assert metrics["f1_macro"] == 0.0 and metrics["exact_match"] == float((probs < 0.5).all(1).float().mean())


def test_exactly_one_label_with_both_classes_gets_its_auroc() -> None:
    generator = torch.Generator().manual_seed(0)
    probs, targets = torch.rand(12, 3, generator=generator), torch.zeros(12, 3)
    targets[:5, 1] = 1  # only label b has both classes
    with pytest.warns(UserWarning, match=r"AUROC is undefined.*'a'.*'c'"):
        metrics = classification_metrics(probs, targets, 0.5, ["a", "b", "c"], no_finding=None)
    expected = roc_auc_score(targets[:, 1].numpy(), probs[:, 1].double().numpy())
    assert metrics["per_label"]["b"]["auroc"] == pytest.approx(expected, abs=TOLERANCE)
    assert metrics["auroc_macro"] == pytest.approx(expected, abs=TOLERANCE) and math.isnan(metrics["per_label"]["a"]["auroc"])


def test_no_warning_when_every_label_has_both_classes(predictions) -> None:
    probs, targets = predictions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        classification_metrics(probs, targets, 0.5, LABELS)


# --------------------------------------------------------------------------- best_f1_thresholds


@pytest.mark.parametrize("decimals", [2, None], ids=["ties", "no-ties"])
def test_best_f1_thresholds_match_precision_recall_curve(decimals) -> None:
    probs, targets = make_predictions(3000, seed=3, decimals=decimals)
    thresholds = best_f1_thresholds(probs, targets)
    assert thresholds.shape == (15,) and thresholds.dtype == probs.dtype
    unique_maxima = 0
    for j in range(15):
        scores, target = probs[:, j].double().numpy(), targets[:, j].numpy()
        f1, candidates = sklearn_best_f1(scores, target)
        assert f1_at(scores, target, float(thresholds[j])) == pytest.approx(f1.max(), abs=1e-9)
        assert float(thresholds[j]) in set(candidates.tolist())  # one of the predicted scores
        if np.sum(np.isclose(f1, f1.max(), rtol=0, atol=1e-12)) == 1:
            unique_maxima += 1
            assert float(thresholds[j]) == candidates[np.argmax(f1)]
        else:  # equal F1 maxima: we return the largest such threshold
            assert float(thresholds[j]) == candidates[np.isclose(f1, f1.max(), rtol=0, atol=1e-12)].max()
    assert unique_maxima >= 10


@pytest.mark.parametrize(("n", "decimals", "seed"), [(3000, 2, 4), (3000, 1, 5), (600, None, 6)])
def test_best_f1_thresholds_match_brute_force(n, decimals, seed) -> None:
    probs, targets = make_predictions(n, seed=seed, decimals=decimals)
    thresholds = best_f1_thresholds(probs, targets)
    for j in range(15):
        scores, target = probs[:, j].numpy(), targets[:, j].numpy()
        if target.sum() == 0:
            assert float(thresholds[j]) == 0.5
            continue
        best_f1, best_threshold = brute_force_best_f1(scores, target)
        assert float(thresholds[j]) == best_threshold
        assert f1_at(scores, target, float(thresholds[j])) == pytest.approx(best_f1, abs=1e-9)


def test_best_f1_thresholds_tie_handling() -> None:
    # Column 0: a run of equal scores must be taken whole. Cutting inside the run of 0.5s would
    # claim F1 = 1; the real choices are 0.9 (F1 2/3) and 0.5 (F1 2/3): equal, so the larger wins.
    # Column 1: no positives -> 0.5. Column 2: all positive -> the smallest score (F1 = 1).
    # Column 3: F1 ties between 0.8 and 0.1 (2/3 each; 0.6 and 0.4 give 1/2 and 2/5) -> 0.8.
    probs = torch.tensor([[0.9, 0.3, 0.7, 0.8], [0.5, 0.2, 0.6, 0.6], [0.5, 0.9, 0.2, 0.4], [0.5, 0.1, 0.4, 0.1]])
    targets = torch.tensor([[1, 0, 1, 1], [1, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 1]])
    assert torch.equal(best_f1_thresholds(probs, targets), torch.tensor([0.9, 0.5, 0.2, 0.8]))


def test_best_f1_thresholds_fast_on_test_set_size() -> None:
    probs, targets = make_predictions(25_596, seed=7, decimals=None)
    best_f1_thresholds(probs, targets)  # warm-up
    start = time.perf_counter()
    thresholds = best_f1_thresholds(probs, targets)
    elapsed = time.perf_counter() - start
    assert thresholds.shape == (15,)
    # Tens of ms on one core; the bound only catches an O(N^2) search (minutes), not load.
    assert elapsed < 5.0, f"{elapsed:.3f} s"


def test_best_f1_thresholds_rejects_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        best_f1_thresholds(torch.tensor([[float("nan")], [0.5]]), torch.tensor([[1], [0]]))


# --------------------------------------------------------------------------- PredictionCollector


def distributed_sampler_batches(n: int, world_size: int) -> list[torch.Tensor]:
    """Per-rank indices exactly as DistributedSampler(shuffle=False) pads them: repeats from the start."""
    total = math.ceil(n / world_size) * world_size
    indices = torch.cat([torch.arange(n), torch.arange(total - n)])
    return [indices[rank::world_size] for rank in range(world_size)]


def test_collector_drops_padding_repeats_and_sorts() -> None:
    probs, targets = make_predictions(7, seed=8, decimals=None)
    collector = PredictionCollector(num_labels=15)
    rank0, rank1 = distributed_sampler_batches(7, 2)  # [0, 2, 4, 6], [1, 3, 5, 0]
    assert rank1.tolist() == [1, 3, 5, 0]
    for batch in (rank1, rank0):  # out of order on purpose
        collector.update(probs[batch], targets[batch], batch)
    result = collector.compute()
    assert isinstance(result, EpochPredictions)
    assert result.indices.tolist() == list(range(7))
    assert torch.equal(result.probs, probs) and torch.equal(result.targets, targets)
    assert result.probs.dtype == torch.float32 and result.targets.dtype == torch.int64 and result.indices.dtype == torch.int64


def test_collector_after_simulated_ddp_sync() -> None:
    """Two ranks' states through torchmetrics' own sync in compute() with a fake all_gather."""
    n = 11
    probs, targets = make_predictions(n, seed=9, decimals=None)
    ranks = [PredictionCollector(num_labels=15) for _ in range(2)]
    for collector, batch in zip(ranks, distributed_sampler_batches(n, 2)):
        for half in (batch[:3], batch[3:]):
            collector.update(probs[half], targets[half], half)
    other = {(torch.cat(s).dtype, torch.cat(s).ndim): torch.cat(s) for s in (ranks[1].probs, ranks[1].targets, ranks[1].indices)}

    gathered = []

    def fake_all_gather(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        gathered.append(tensor)
        return [tensor, other[(tensor.dtype, tensor.ndim)]]

    # What Lightning/DDP does: compute() syncs (states become concatenated tensors), then unsyncs.
    ranks[0].dist_sync_fn = fake_all_gather
    ranks[0].distributed_available_fn = lambda: True
    result = ranks[0].compute()
    assert len(gathered) == 3  # probs, targets, indices, each pre-concatenated into one tensor
    assert result.indices.tolist() == list(range(n))  # 12 gathered rows: 11 samples + 1 padding repeat
    assert torch.equal(result.probs, probs) and torch.equal(result.targets, targets)
    assert isinstance(ranks[0].probs, list) and sum(len(i) for i in ranks[0].indices) == 6  # unsynced again

    # The same with states that are already tensors (as right after a sync).
    plain = PredictionCollector(num_labels=15)
    plain.probs = torch.cat([torch.cat(ranks[0].probs), other[(torch.float32, 2)]])
    plain.targets = torch.cat([torch.cat(ranks[0].targets), other[(torch.int64, 2)]])
    plain.indices = torch.cat([torch.cat(ranks[0].indices), other[(torch.int64, 1)]])
    plain._update_count = 1
    assert torch.equal(plain.compute().probs, probs)


def test_collector_reset_and_empty() -> None:
    probs, targets = make_predictions(4, seed=10, decimals=None)
    collector = PredictionCollector(num_labels=15)
    collector.update(probs, targets, torch.arange(4))
    assert len(collector.compute().indices) == 4
    collector.reset()
    assert collector.probs == [] and collector.targets == [] and collector.indices == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        empty = collector.compute()
    assert empty.probs.shape == (0, 15) and empty.indices.shape == (0,)
    collector.update(probs[:2], targets[:2], torch.tensor([5, 3]))
    assert collector.compute().indices.tolist() == [3, 5]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_collector_keeps_float32(dtype) -> None:
    probs, targets = make_predictions(5, seed=11, decimals=None)
    collector = PredictionCollector()
    collector.update(probs.to(dtype), targets.bool(), torch.arange(5, dtype=torch.int32))
    result = collector.compute()
    assert result.probs.dtype == torch.float32 and result.targets.dtype == torch.int64 and result.indices.dtype == torch.int64
    assert torch.equal(result.probs, probs.to(dtype).float())


def test_collector_validates_inputs() -> None:
    collector = PredictionCollector(num_labels=15)
    with pytest.raises(ValueError, match="expected 15 labels"):
        collector.update(torch.rand(2, 14), torch.zeros(2, 14), torch.arange(2))
    with pytest.raises(ValueError, match="indices"):
        collector.update(torch.rand(2, 15), torch.zeros(2, 15), torch.arange(3))
    with pytest.raises(ValueError):
        collector.update(torch.rand(2, 15), torch.zeros(3, 15), torch.arange(2))
    with pytest.raises(TypeError):
        collector.update(torch.rand(2, 15), torch.zeros(2, 15), torch.arange(2.0))


def test_an_epoch_of_only_skipped_batches_scores_nan_with_a_warning() -> None:
    """Every batch empty (all images skipped): (0, L) predictions, NaN metrics and a warning, no crash."""
    collector = PredictionCollector(num_labels=15)
    for _ in range(3):  # what an all-skipped evaluation batch collects
        collector.update(torch.empty(0, 15), torch.empty(0, 15), torch.empty(0, dtype=torch.long))
    epoch = collector.compute()
    assert epoch.probs.shape == (0, 15) and epoch.targets.shape == (0, 15)
    thresholds = torch.linspace(0.1, 0.9, 15)
    with pytest.warns(UserWarning, match="no samples to score: every metric is NaN"):
        metrics = classification_metrics(epoch.probs, epoch.targets, thresholds, LABELS)
    assert all(math.isnan(metrics[name]) for name in MACRO_METRICS)
    assert set(metrics["per_label"]) == set(LABELS)
    for i, name in enumerate(LABELS):
        row = metrics["per_label"][name]
        assert row["positives"] == 0 and row["threshold"] == pytest.approx(float(thresholds[i]))
        assert all(math.isnan(row[key]) for key in ("auroc", "f1", "precision", "recall"))
    assert "nan" in format_metrics_table({"empty": metrics})
    assert best_f1_thresholds(epoch.probs, epoch.targets).tolist() == [0.5] * 15


def test_collector_feeds_metrics_end_to_end(predictions) -> None:
    probs, targets = predictions
    collector = PredictionCollector(num_labels=15)
    order = torch.randperm(len(probs), generator=torch.Generator().manual_seed(12))
    for batch in torch.split(torch.cat([order, order[:5]]), 256):  # with a few padding repeats
        collector.update(probs[batch].bfloat16(), targets[batch], batch)
    result = collector.compute()
    assert torch.equal(result.targets, targets)
    metrics = classification_metrics(result.probs, result.targets, best_f1_thresholds(result.probs, result.targets), LABELS)
    reference = roc_auc_score(targets.numpy(), result.probs.double().numpy())
    assert metrics["auroc_macro"] == pytest.approx(reference, abs=TOLERANCE)


# --------------------------------------------------------------------------- tables


def test_format_metrics_table(predictions) -> None:
    probs, targets = predictions
    at_half = classification_metrics(probs, targets, 0.5, LABELS)
    tuned = classification_metrics(probs, targets, best_f1_thresholds(probs, targets), LABELS)
    table = format_metrics_table({"threshold 0.5": at_half, "tuned": tuned})
    lines = table.splitlines()
    assert lines[0] == "| metric | threshold 0.5 | tuned |"
    assert len(lines) == 2 + len(MACRO_METRICS)
    f1_row = next(line for line in lines if line.startswith("| f1_macro |"))
    assert f1_row == f"| f1_macro | {at_half['f1_macro']:.4f} | {tuned['f1_macro']:.4f} |"
    assert tuned["f1_macro"] > at_half["f1_macro"]  # tuning thresholds on the same data can only help
    assert "| exact_match | - |" in format_metrics_table({"partial": {"f1_macro": 0.5}})


def test_per_label_table(predictions, tmp_path) -> None:
    probs, targets = predictions
    metrics = classification_metrics(probs, targets, 0.5, LABELS)
    frame = per_label_table(metrics)
    assert list(frame.index) == list(LABELS) and frame.index.name == "label"
    assert list(frame.columns) == list(PER_LABEL_COLUMNS)
    assert frame.loc["Hernia", "positives"] == metrics["per_label"]["Hernia"]["positives"]
    assert frame["positives"].dtype == np.int64
    frame.to_csv(tmp_path / "per_label.csv")
    back = pd.read_csv(tmp_path / "per_label.csv", index_col="label")
    pd.testing.assert_frame_equal(back, frame)


def test_midpoint_rule_keeps_the_best_cut_and_sits_halfway_to_the_next_lower_score():
    from cxr_lightning.evaluation.metrics import best_f1_thresholds

    probs = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.6, 0.7], [0.3, 0.1], [0.1, 0.05]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 0], [0, 0]])
    score = best_f1_thresholds(probs, targets, "score")
    midpoint = best_f1_thresholds(probs, targets, "midpoint")
    # label 0: the best cut takes 0.9, 0.8, 0.6, 0.3 (F1 6/7); the next lower score is 0.1
    assert score[0].item() == pytest.approx(0.3) and midpoint[0].item() == pytest.approx((0.3 + 0.1) / 2)
    # label 1: the tied 0.7s are one cut; halfway to 0.2
    assert score[1].item() == pytest.approx(0.7) and midpoint[1].item() == pytest.approx((0.7 + 0.2) / 2)
    # the same images are predicted positive on validation by both
    assert torch.equal(probs >= score, probs >= midpoint)
    # a best cut at the lowest score keeps it
    assert best_f1_thresholds(torch.tensor([[0.2], [0.4]]), torch.tensor([[1], [1]]), "midpoint").item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="threshold rule 'middle'"):
        best_f1_thresholds(probs, targets, "middle")
