"""The numbers printed in the paper (Allahverdiyeva, Tsotras, Saderi: "Deep Learning Approaches
for NIH Chest X-Ray Classification"), keyed by this project's run names, for side-by-side reports.

Each row of a paper table is one run of one shipped config (``configs/<run>.yaml``); ``group``
says which thresholds the paper's cell used: ``tuned`` (per-label F1-optimal on validation) or
``default`` (0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

METRIC_ROWS = (
    ("recall_macro", "Recall (macro)"),
    ("precision_macro", "Precision (macro)"),
    ("f1_macro", "F1-score (macro)"),
    ("auroc_macro", "AUC (macro)"),
    ("exact_match", "Exact Match Ratio"),
)


@dataclass(frozen=True)
class Column:
    """One column of a paper table: a run, which thresholds, the paper's numbers."""

    title: str
    run: str
    group: str
    paper: dict[str, float]


TABLE_1 = (
    "Table 1: ResNet-50 (after threshold tuning)",
    (
        Column("Linear Weights", "resnet_linear", "tuned",
               {"recall_macro": 0.3875, "precision_macro": 0.1821, "f1_macro": 0.2236, "auroc_macro": 0.6912, "exact_match": 0.0360}),
        Column("Log Weights", "resnet_log", "tuned",
               {"recall_macro": 0.4150, "precision_macro": 0.3049, "f1_macro": 0.3103, "auroc_macro": 0.7745, "exact_match": 0.2130}),
        Column("Log Weights + Conv Input Layers", "resnet_log_conv", "tuned",
               {"recall_macro": 0.4266, "precision_macro": 0.2866, "f1_macro": 0.3253, "auroc_macro": 0.7800, "exact_match": 0.1969}),
    ),
)  # fmt: skip

TABLE_2 = (
    "Table 2: BEiT configurations (before threshold tuning)",
    (
        Column("Model 1", "beit_model1", "default",
               {"recall_macro": 0.5263, "precision_macro": 0.0967, "f1_macro": 0.0960, "auroc_macro": 0.5018, "exact_match": 0.0000}),
        Column("Model 2", "beit_model2", "default",
               {"recall_macro": 0.0334, "precision_macro": 0.3749, "f1_macro": 0.0545, "auroc_macro": 0.7500, "exact_match": 0.0012}),
        Column("Model 3", "beit_model3", "default",
               {"recall_macro": 0.4978, "precision_macro": 0.0959, "f1_macro": 0.0817, "auroc_macro": 0.4941, "exact_match": 0.0000}),
        Column("Model 4", "beit_model4", "default",
               {"recall_macro": 0.6974, "precision_macro": 0.1799, "f1_macro": 0.2678, "auroc_macro": 0.7701, "exact_match": 0.0684}),
        Column("Model 5", "beit_model5", "default",
               {"recall_macro": 0.6664, "precision_macro": 0.1748, "f1_macro": 0.2624, "auroc_macro": 0.7657, "exact_match": 0.0780}),
    ),
)  # fmt: skip

#: The configuration rows printed above Table 2's metrics.
TABLE_2_SETTINGS = (
    ("Scheduler with Linear Warmup", ("No", "Yes", "No", "Yes", "Yes")),
    ("Finetune (FT) or Transfer Learning (TL)", ("TL", "FT", "FT", "FT", "FT")),
    # The paper's table says CD for model 1, but its code (and beit_model1.yaml) gives the frozen
    # model a metadata MLP 3-64-32; the row says what our run does and what the paper printed.
    ("Metadata (CD = concatenated directly, MLP = encoded first)", ("MLP 3-64-32 (paper's table: CD)", "CD", "CD", "CD", "MLP 3-128-128")),
    ("Loss Weighting Method", ("Log", "Unweighted", "Log", "Log", "Log")),
)

TABLE_3 = (
    "Table 3: test-set performance (ResNet and BEiT after threshold tuning, CNN at 0.5)",
    (
        Column("Baseline (CNN)", "cnn", "default",
               {"recall_macro": 0.0753, "precision_macro": 0.3110, "f1_macro": 0.1029, "auroc_macro": 0.7581, "exact_match": 0.2204}),
        Column("ResNet", "resnet_log_conv", "tuned",
               {"recall_macro": 0.4266, "precision_macro": 0.2866, "f1_macro": 0.3253, "auroc_macro": 0.7800, "exact_match": 0.1969}),
        Column("BEiT (Vision Transformer)", "beit_model4", "tuned",
               {"recall_macro": 0.4236, "precision_macro": 0.2707, "f1_macro": 0.3122, "auroc_macro": 0.7701, "exact_match": 0.1801}),
    ),
)  # fmt: skip

#: Tables 5-7: one ResNet run each, default 0.5 against tuned thresholds (recall, precision, F1).
THRESHOLD_TABLES = (
    ("Table 5: ResNet-50, linear-scaled weights", "resnet_linear",
     {"default": {"recall_macro": 0.7848, "precision_macro": 0.1373, "f1_macro": 0.1904},
      "tuned": {"recall_macro": 0.3875, "precision_macro": 0.1821, "f1_macro": 0.2236}}),
    ("Table 6: ResNet-50, log-scaled weights", "resnet_log",
     {"default": {"recall_macro": 0.2571, "precision_macro": 0.3106, "f1_macro": 0.2689},
      "tuned": {"recall_macro": 0.4150, "precision_macro": 0.3049, "f1_macro": 0.3103}}),
    ("Table 7: ResNet-50, log-scaled weights and conv input layers", "resnet_log_conv",
     {"default": {"recall_macro": 0.2802, "precision_macro": 0.3219, "f1_macro": 0.2883},
      "tuned": {"recall_macro": 0.4266, "precision_macro": 0.2866, "f1_macro": 0.3253}}),
)  # fmt: skip

#: Appendix D (Table 4): percent positive in training, validation, testing.
TABLE_4 = {
    "Atelectasis": (9.43, 10.34, 12.81), "Cardiomegaly": (1.99, 1.90, 4.18), "Consolidation": (3.26, 3.51, 7.09),
    "Edema": (1.61, 1.47, 3.61), "Effusion": (9.95, 10.33, 18.20), "Emphysema": (1.63, 1.74, 4.27),
    "Fibrosis": (1.44, 1.50, 1.70), "Hernia": (0.17, 0.12, 0.34), "Infiltration": (15.94, 15.84, 23.88),
    "Mass": (4.68, 4.56, 6.83), "No Finding": (58.48, 57.74, 38.53), "Nodule": (5.46, 5.33, 6.34),
    "Pleural_Thickening": (2.58, 2.67, 4.47), "Pneumonia": (1.02, 0.96, 2.17), "Pneumothorax": (3.02, 3.21, 10.41),
}  # fmt: skip

#: Figure 1: per-label ROC curves of the best model of each kind.
FIGURE_1_RUNS = (("cnn", "Baseline CNN"), ("resnet_log_conv", "ResNet-50, log weights + conv input layers"), ("beit_model4", "BEiT model 4"))

#: Beyond the paper: the imbalance methods it names as future work, each against its baseline.
IMBALANCE_RUNS = (
    ("resnet_log", "log weights (the paper's)"),
    ("resnet_log_focal", "log weights + focal loss"),
    ("resnet_asl", "asymmetric loss"),
    ("resnet_log_oversample", "log weights + rare-finding oversampling"),
)

#: Beyond the paper: other backbones beside its best models (``make backbones``), with the literature's
#: mean AUROC over the 14 findings where there is one: CheXNet 0.841 (Rajpurkar et al. 2017, its own
#: split) and its public reproduction 0.838 (jrzech/reproduce-chexnet, its own patient split).
BACKBONE_RUNS = (
    ("chexnet", "CheXNet DenseNet-121 (the reproduction's recipe)", 0.838),
    ("xrv_densenet121_chex", "torchxrayvision DenseNet-121, CheXpert weights", None),
)

#: Every run of the paper's rows and the imbalance methods, in the Makefile's order.
PAPER_RUNS = ("cnn", "resnet_linear", "resnet_log", "resnet_log_conv", "beit_model1", "beit_model2", "beit_model3", "beit_model4", "beit_model5")
ALL_RUNS = PAPER_RUNS + tuple(name for name, _ in IMBALANCE_RUNS if name not in PAPER_RUNS)
