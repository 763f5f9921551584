"""Images: a sample is a (C, H, W) tensor with a (H, W) foreground mask; the
units are the cells of a G x G grid over the image (the paper's 16 x 16,
Fig. 3), and a cell is foreground when at least ``rule`` of its pixels are."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor

from kdlens.data.base import denormalize
from kdlens.modalities.units import foreground_units, grid_units, unit_foreground_share
from kdlens.errors import UsageError
from kdlens.report.render import grid_unit_maps
from kdlens.modalities.base import MODALITIES, Modality


class ImageModality(Modality):
    name = "image"
    sample_schema = "image (C, H, W) float, mask (H, W) bool"

    def units(self, sample_shape: Sequence[int], grid: int) -> Tensor:
        height, width = sample_shape[-2:]
        if not 1 <= grid <= min(height, width):
            raise UsageError(f"grid = {grid}: expected 1 to {min(height, width)} cells a side "
                             f"for {height}x{width} images")
        return grid_units(height, width, grid)

    def foreground(self, masks: Tensor, units: Tensor, rule: float) -> Tensor:
        return foreground_units(unit_foreground_share(masks, units), rule)

    def report_inputs(self, inputs: Tensor, masks: Tensor, dataset: Any) -> dict[str, Tensor]:
        """The images as they look (un-normalised, in [0, 1]) and their object masks."""
        return {"images": denormalize(inputs, dataset.mean, dataset.std).clamp(0, 1), "masks": masks}

    def unit_layout(self, count: int, grid: int, n_units: int) -> tuple[int, ...]:
        return (count, grid, grid)

    def unit_maps(self, layer: str, maps: Mapping[str, Any], estimator: str) -> tuple[bytes, str]:
        """The paper's Fig. 3 / 6: the images with their knowledge cells shaded."""
        return grid_unit_maps(layer, maps, estimator)

    def describe_units(self, grid: int) -> str:
        return f"grid {grid}x{grid}"


MODALITIES.register("image")(ImageModality)
