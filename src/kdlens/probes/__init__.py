"""Probes of what a trained network represents, after the IE-KD paper's
analysis (Huang et al., CVPR 2021, Sec. 4.7, Fig. 1, 3 and 4):

- ``linear_cka`` / ``channel_split_cka``: representation similarity (Fig. 4a);
- ``active_neurons``: the active-subspace size of a layer (Fig. 4b);
- ``sharpness_curve``: training loss under Gaussian weight noise (Fig. 4c);
- ``relevance_maps``: LRP pixel relevance, optionally through a channel subset
  (Fig. 1 and 3).
"""

from kdlens.probes.active_neurons import ActiveNeurons, active_neurons, count_active
from kdlens.probes.cka import channel_split_cka, linear_cka
from kdlens.probes.relevance import relevance_maps
from kdlens.probes.sharpness import sharpness_curve

__all__ = [
    "ActiveNeurons",
    "active_neurons",
    "channel_split_cka",
    "count_active",
    "linear_cka",
    "relevance_maps",
    "sharpness_curve",
]
