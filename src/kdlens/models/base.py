"""The interface every kdlens model shares.

A model is an ordered sequence of named *stages*; the paper's named layers are
the outputs of the stages: ``conv`` (the top convolutional layer, after its
activation), ``fc1`` and ``fc2`` (after their ReLU) and ``fc3`` (the logits).
This makes "the layers up to and including l" a prefix of the stages, which is
what the student protocol freezes, and lets a forward pass stop at a layer so
nothing above it is computed.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

from torch import Tensor, nn

from kdlens.errors import UnknownNameError, UsageError

PAPER_LAYERS: tuple[str, ...] = ("conv", "fc1", "fc2", "fc3")
# ``"conv.pre"`` names the input of the ReLU that ends stage ``conv``: the
# pre-activation feature some distillation methods (OD) need.
PRE_ACTIVATION = ".pre"
# ``"stage3"`` names the output of the model's third resolution stage (its
# ``stage_ends[2]``, counted from 1): the sensing points of layer-wise methods
# (IEP), which teacher and student resolve each in its own architecture.
STAGE_PREFIX = "stage"


def _stage_with_pre_activation(module: nn.Module, x: Tensor, where: str) -> tuple[Tensor, Tensor]:
    """(output, input of the final ReLU) of a stage that ends in a ReLU,
    looking through nested ``nn.Sequential``s."""
    if isinstance(module, nn.ReLU):
        return module(x), x
    if isinstance(module, nn.Sequential) and len(module) > 0:
        children = list(module.children())
        for child in children[:-1]:
            x = child(x)
        return _stage_with_pre_activation(children[-1], x, where)
    raise UsageError(f"layer {where!r} does not end in a ReLU ({type(module).__name__}); it has no pre-activation feature")


def pre_activation_norm(stage: nn.Module) -> Optional[nn.Module]:
    """The batch norm right before the ReLU that ends ``stage``, if there is one."""
    while isinstance(stage, nn.Sequential) and len(stage) > 0:
        children = list(stage.children())
        if isinstance(children[-1], nn.ReLU):
            before = children[-2] if len(children) > 1 else None
            return before if isinstance(before, (nn.BatchNorm1d, nn.BatchNorm2d)) else None
        stage = children[-1]
    return None


class NamedLayerModel(nn.Module):
    """A classifier built from named stages run in order."""

    def __init__(self, stages: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.stages.keys())

    def stage_end(self, alias: str) -> str:
        """The dotted module name behind a ``"stage<k>"`` alias."""
        ends = list(getattr(self, "stage_ends", []))
        index = alias.removeprefix(STAGE_PREFIX)
        if not (alias.startswith(STAGE_PREFIX) and index.isdigit() and 1 <= int(index) <= len(ends)):
            raise KeyError(
                f"{type(self).__name__} has no stage {alias!r}; expected stage1 .. stage{len(ends)}"
                if ends else f"{type(self).__name__} declares no stage ends; {alias!r} cannot be resolved"
            )
        return ends[int(index) - 1]

    @property
    def stage_names(self) -> tuple[str, ...]:
        """The ``"stage<k>"`` aliases of this model, shallowest first."""
        return tuple(f"{STAGE_PREFIX}{k}" for k in range(1, len(getattr(self, "stage_ends", [])) + 1))

    def check_layer(self, layer: str) -> str:
        if layer not in self.stages:
            raise UnknownNameError(
                f"{type(self).__name__} has no layer {layer!r}; "
                f"expected one of {', '.join(self.layer_names)}"
            )
        return layer

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return x

    def forward_to(self, x: Tensor, layer: str) -> Tensor:
        """The output of ``layer``; the stages above it are not run."""
        self.check_layer(layer)
        for name, stage in self.stages.items():
            x = stage(x)
            if name == layer:
                return x
        raise AssertionError("unreachable")

    def forward_from(self, feature: Tensor, layer: str) -> Tensor:
        """Run the stages above ``layer`` on its output ``feature``: the logits."""
        self.check_layer(layer)
        above = False
        for name, stage in self.stages.items():
            if above:
                feature = stage(feature)
            above = above or name == layer
        return feature

    def features(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        """Outputs of several named layers in one pass that stops at the deepest.
        ``"<layer>.pre"`` asks for the layer's pre-activation feature."""
        return self._run(x, layers, to_end=False)[1]

    def forward_with_features(self, x: Tensor, layers: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """The logits and the named features of one full pass."""
        return self._run(x, layers, to_end=True)

    def _run(self, x: Tensor, layers: Sequence[str], to_end: bool) -> tuple[Tensor, dict[str, Tensor]]:
        wanted = set(layers)
        aliases = {name for name in wanted if name.startswith(STAGE_PREFIX) and name not in self.stages}
        for name in wanted - aliases:
            self.check_layer(name.removesuffix(PRE_ACTIVATION))
        out: dict[str, Tensor] = {}
        handles = []
        for alias in aliases:
            def hook(_module: nn.Module, _args, output: Tensor, alias: str = alias) -> None:
                out[alias] = output

            handles.append(self.get_submodule(self.stage_end(alias)).register_forward_hook(hook))
        try:
            for name, stage in self.stages.items():
                if len(out) == len(wanted) and not to_end:
                    break
                pre_name = name + PRE_ACTIVATION
                if pre_name in wanted:
                    x, out[pre_name] = _stage_with_pre_activation(stage, x, name)
                else:
                    x = stage(x)
                if name in wanted:
                    out[name] = x
        finally:
            for handle in handles:
                handle.remove()
        return x, {name: out[name] for name in layers}

    def stages_up_to(self, layer: str) -> list[nn.Module]:
        """The stages that compute ``layer``, bottom first (``layer`` included)."""
        self.check_layer(layer)
        names = list(self.stages.keys())
        return [self.stages[n] for n in names[: names.index(layer) + 1]]

    def stages_above(self, layer: str) -> list[nn.Module]:
        """The stages above ``layer`` (empty for the output layer)."""
        self.check_layer(layer)
        names = list(self.stages.keys())
        return [self.stages[n] for n in names[names.index(layer) + 1 :]]

    def parameters_up_to(self, layer: str) -> Iterator[nn.Parameter]:
        for stage in self.stages_up_to(layer):
            yield from stage.parameters()

    def parameters_above(self, layer: str) -> Iterator[nn.Parameter]:
        for stage in self.stages_above(layer):
            yield from stage.parameters()
