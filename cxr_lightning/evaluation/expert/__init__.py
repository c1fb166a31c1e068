"""Evaluation against radiologists' labels (Majkowska et al. 2020, Nabulsi et al. 2021) shipped with the package.

``sets`` loads the relabellings, ``mapping`` turns a run's NIH-label probabilities into each
expert finding's score, ``scoring`` gives the AUROCs against the radiologists' and NIH's labels,
``readers`` the individual radiologists' operating points and ``figures`` the ROC figures.
"""

from cxr_lightning.evaluation.expert.figures import plot_expert_roc_curves
from cxr_lightning.evaluation.expert.mapping import AIRSPACE_OPACITY_NIH_LABELS, NIH_LABELS_OF, map_finding
from cxr_lightning.evaluation.expert.readers import reader_operating_points
from cxr_lightning.evaluation.expert.scoring import ExpertScores, score_against_experts
from cxr_lightning.evaluation.expert.sets import ExpertLabelsError, ExpertLabelSet, all_findings, four_findings

__all__ = [
    "AIRSPACE_OPACITY_NIH_LABELS",
    "NIH_LABELS_OF",
    "ExpertLabelSet",
    "ExpertLabelsError",
    "ExpertScores",
    "all_findings",
    "four_findings",
    "map_finding",
    "plot_expert_roc_curves",
    "reader_operating_points",
    "score_against_experts",
]
