"""Information discarding and knowledge points (paper, Sec. 3.1-3.4)."""

from kdlens.explain.dynamics import (
    Stability,
    d_mean_var,
    distance_to_peak,
    peak_epoch,
    stability,
    weight_distances,
)
from kdlens.explain.estimator import ESTIMATORS, HALF_LOG_2PIE, DiscardingResult, information_discarding
from kdlens.explain.paper import paper_defaults
from kdlens.explain.knowledge_points import (
    KnowledgePoints,
    PointSummary,
    foreground_ratio,
    knowledge_points,
    summarize_points,
)
from kdlens.modalities.units import (
    check_units,
    element_units,
    foreground_units,
    grid_units,
    num_units,
    point_units,
    token_units,
    unit_foreground_share,
)

__all__ = [
    "HALF_LOG_2PIE",
    "DiscardingResult",
    "ESTIMATORS",
    "KnowledgePoints",
    "PointSummary",
    "Stability",
    "check_units",
    "d_mean_var",
    "distance_to_peak",
    "element_units",
    "foreground_ratio",
    "foreground_units",
    "grid_units",
    "information_discarding",
    "knowledge_points",
    "num_units",
    "paper_defaults",
    "peak_epoch",
    "point_units",
    "stability",
    "summarize_points",
    "token_units",
    "unit_foreground_share",
    "weight_distances",
]
