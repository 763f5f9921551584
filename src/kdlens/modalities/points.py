"""Point clouds: a sample is an (N, 3) tensor of xyz coordinates with an (N,)
foreground mask (the object's points; the rest are the background points the
paper attaches from clouds of other classes, Sec. 4.1). Each point is a unit:
its three coordinates share one noise scale, so the noise moves the point."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor

from kdlens.modalities.units import foreground_units, point_units, unit_foreground_share
from kdlens.errors import UsageError
from kdlens.report.point_maps import point_cloud_maps
from kdlens.modalities.base import MODALITIES, Modality


class PointModality(Modality):
    name = "points"
    sample_schema = "points (N, 3) float, mask (N,) bool"

    def units(self, sample_shape: Sequence[int], grid: int) -> Tensor:
        """One unit per point; ``grid`` does not apply to clouds and is ignored."""
        if len(sample_shape) != 2 or sample_shape[-1] != 3:
            raise UsageError(f"a point-cloud sample has shape {tuple(sample_shape)}; expected (N, 3)")
        return point_units(sample_shape[0], sample_shape[1])

    def foreground(self, masks: Tensor, units: Tensor, rule: float) -> Tensor:
        """A point is foreground when it is the object's (its one mask value; ``rule`` changes nothing)."""
        return foreground_units(unit_foreground_share(masks, units, align="leading"), rule)

    def report_inputs(self, inputs: Tensor, masks: Tensor, dataset: Any) -> dict[str, Tensor]:
        """The clouds' xyz (already in the unit sphere) and which points are the object's."""
        return {"clouds": inputs, "masks": masks}

    def unit_layout(self, count: int, grid: int, n_units: int) -> tuple[int, ...]:
        return (count, n_units)

    def unit_maps(self, layer: str, maps: Mapping[str, Any], estimator: str) -> tuple[bytes, str]:
        """A 3-D scatter per cloud and role, the point-cloud panels of the paper's Fig. 6."""
        return (point_cloud_maps(layer, maps, estimator=estimator),
                f"Knowledge points on the point clouds at {layer} ({estimator} estimator): colour = entropy "
                "(dark = information kept), orange / blue rings = foreground / background knowledge points "
                "(the point-cloud counterpart of Fig. 6)")

    def describe_units(self, grid: int) -> str:
        return "one unit per point"


MODALITIES.register("points")(PointModality)
