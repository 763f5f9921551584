"""The contract of an input kind, and how a dataset says which kind it holds.

A modality answers, for a batch of samples of its kind:

* ``units(sample_shape, grid)``: the unit map (captum's ``feature_mask``
  convention, see ``kdlens.modalities.units``): which input elements share one
  noise scale sigma. Noise is always added to the model's input tensor, so
  the unit map says where it goes: pixels of a grid cell, the coordinates of
  a point, the embedding of a word.
* ``foreground(masks, units, rule)``: (B, n_units) bool, which units are on
  the object, from the samples' per-element foreground annotation.
* ``analysed(model, inputs)`` and ``batch_units(inputs, analysed, grid)``:
  the float tensor the noise goes on (the inputs, or a text model's word
  embeddings) and the batch's unit map (shared, or one per sample when the
  samples have different units, as sentences have different words).
* ``report_inputs(inputs, masks, dataset)`` and ``unit_layout(count, grid,
  n_units)``: what the report draws the knowledge points on (images in [0, 1],
  or clouds) and the shape per-unit values take there ((B, G, G) cells, or
  (B, N) points).
* ``unit_maps(layer, maps, estimator)``: the report's figure of the final
  knowledge points on those inputs, and its caption.

Everything else in the measurement (the estimators, knowledge points, the
dynamics) is the same for every kind.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor

from kdlens.registry import Registry


class Modality:
    """An input kind; subclasses fill in the two questions above."""

    name: str = ""
    # what one sample's ``image`` field holds, for messages and docs
    sample_schema: str = ""

    def units(self, sample_shape: Sequence[int], grid: int) -> Tensor:
        raise NotImplementedError

    def foreground(self, masks: Tensor, units: Tensor, rule: float) -> Tensor:
        raise NotImplementedError

    def analysed(self, model: Any, inputs: Tensor) -> Tensor:
        """The float tensor the noise goes on, for a batch of the dataset's inputs:
        the inputs themselves, unless the kind's inputs are not continuous (text:
        the model's word-piece embeddings)."""
        return inputs

    def batch_units(self, inputs: Tensor, analysed: Tensor, grid: int) -> Tensor:
        """The unit map of a batch: one shared map (:meth:`units`) unless the kind's
        units differ per sample (the words of sentences: a (B, *analysed) map)."""
        return self.units(analysed.shape[1:], grid)

    def report_inputs(self, inputs: Tensor, masks: Tensor, dataset: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    def unit_layout(self, count: int, grid: int, n_units: int) -> tuple[int, ...]:
        raise NotImplementedError

    def unit_maps(self, layer: str, maps: Mapping[str, Any], estimator: str) -> tuple[bytes, str]:
        """PNG bytes and caption of the knowledge points of every role in ``maps``
        ({**report_inputs, role: {"entropy", "points", "foreground"} in ``unit_layout``})."""
        raise NotImplementedError

    def describe_units(self, grid: int) -> str:
        """The units in a few words, for what the command line prints."""
        raise NotImplementedError


MODALITIES: Registry[Modality] = Registry("modality")


def modality_of(dataset: Any) -> Modality:
    """The modality a dataset (or a config's ``data`` section) declares in its
    ``modality`` attribute; images when it declares none."""
    return MODALITIES.build(getattr(dataset, "modality", "image"))
