"""Pixel relevance heatmaps by Layer-wise Relevance Propagation (LRP).

Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation" (PLoS ONE 2015); Montavon et al., "Layer-Wise
Relevance Propagation: An Overview" (2019). The IE-KD paper (Huang et al., CVPR
2021, Fig. 1 and 3, Sec. 4.7) shows LRP heatmaps of the teacher, of the student
and of the student's inheritance and exploration channels.

The relevance of the target logit f_t (default: the predicted class) is
redistributed layer by layer down to the pixels. With the LRP-epsilon rule,
for a layer z_k = sum_j a_j w_jk + b_k,

    R_j = sum_k a_j w_jk / (z_k + eps * sign(z_k)) * R_k,

and with the LRP-gamma rule the weights are w + gamma * max(w, 0) (for the
numerator and the denominator). ``relevance_maps`` returns sum_c R_{c,h,w}, the
relevance summed over colour channels, shape (B, H, W). Positive relevance
speaks for the class, negative against it.

Implementation: Captum's ``LRP`` (``captum.attr.LRP``), which realises the rules
as gradient hooks. Zennit was considered and rejected: it requires torchvision,
which has no CPU build in this project's environment. Captum needs a rule for
every leaf module and every operation of the forward to be a module, so the
model is first deep-copied (the caller's model is never touched, parameters, mode and hooks
included) and prepared:

* eval mode; every BatchNorm that directly follows a conv in a Sequential is
  fused into that conv ("canonization", as Zennit and iNNvestigate do: the
  function is unchanged, and LRP then treats conv+BN as the one affine map it
  is);
* the residual sum of a ResNet ``BasicBlock`` (``residual(x) + shortcut(x)``)
  is a functional add, which Captum's LRP cannot see (its docs: "any addition
  in a forward function needs to be replaced with the module"); left alone,
  the add's backward would hand the *full* relevance to both branches. It is
  rewritten with Captum's ``Addition_Module``, which splits R between the
  branches in proportion to their contributions (the epsilon rule for a sum);
  an identity shortcut then feeds ``x`` straight into the sum. The tests check
  the result against gradient x input on resnet18, which it must equal;
* rules: Conv2d gets LRP-gamma when ``gamma > 0`` and LRP-epsilon otherwise;
  Linear, average pooling, the residual sum and any unfused BatchNorm (all
  affine maps) get LRP-epsilon; Flatten and MaxPool2d get a pass-through
  (LRP-epsilon with a negligible epsilon: R_in = R_out on a reshape, and all of
  a pool window's relevance to its maximum, winner-takes-all); ReLU and
  Dropout (eval) pass relevance through unchanged (Captum's treatment of
  activations).

Any other module type with children (a forward Captum cannot see into), and
any leaf without a rule here (an ``nn.Identity`` outside a Sequential, a
sigmoid), raises ``TypeError`` rather than returning silently wrong heatmaps.

With the defaults (``epsilon`` = 1e-9, ``gamma`` = 0) LRP-epsilon on a ReLU
network equals gradient x input (Ancona et al., ICLR 2018); larger epsilon or
gamma > 0 gives the smoother heatmaps Montavon et al. (2019) recommend (their
composite: gamma for lower convs, epsilon for middle layers; here one
``gamma`` applies to every conv, our simplification). Captum's gamma rule
keeps the biases and has no epsilon, so with large (BatchNorm-fused) biases its
denominators can come near zero and the map blow up: check such maps.

Relevance of a channel subset ("LRP of the inheritance / exploration part"):
with ``layer`` and ``channels``, a gate module is inserted after that named
stage of the copy. Its forward is the identity (the logits do not change), and
its rule multiplies the relevance arriving at the stage output by a 0/1 channel
mask, so only relevance flowing through the chosen channels reaches the
pixels. Propagation is linear in the relevance, so the maps of a channel set and
of its complement sum to the unrestricted map.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from captum.attr import LRP
from captum.attr._utils.custom_modules import Addition_Module
from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kdlens.errors import UsageError
from kdlens.models.base import NamedLayerModel
from kdlens.models.resnet import BasicBlock
from kdlens.probes._channels import channel_index

# Epsilon of the pass-through rule: small enough that x / (x + eps) == 1 in
# float32 for any activation that carries relevance.
_PASS_EPSILON = 1e-20

Targets = None | int | Sequence[int] | Tensor


class _ResidualSum(nn.Module):
    """A BasicBlock with its residual sum as a module: relu(residual(x) + shortcut(x))."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.residual = block.residual
        self.shortcut = None if isinstance(block.shortcut, nn.Identity) else block.shortcut
        self.add = Addition_Module()
        self.relu = block.relu

    def forward(self, x: Tensor) -> Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.add(self.residual(x), skip))


class _ChannelGate(nn.Module):
    """The identity in the forward pass; its LRP rule masks the relevance."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return x.clone()  # a new tensor, so Captum's input and output hooks do not collide


class _GateRule(EpsilonRule):
    """Pass-through rule that keeps only the relevance of the masked channels."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(epsilon=_PASS_EPSILON)
        self.mask = mask

    def _create_backward_hook_output(self, outputs: Tensor):
        inner = super()._create_backward_hook_output(outputs)
        return lambda grad: inner(grad * self.mask)


_CONTAINERS = (nn.Sequential, nn.ModuleDict, NamedLayerModel, _ResidualSum)


def _replace_children(module: nn.Module) -> None:
    """Rewrite BasicBlocks, fuse conv+BN pairs and drop Identity modules, in place."""
    for name, child in list(module.named_children()):
        if isinstance(child, BasicBlock):
            child = _ResidualSum(child)
            module._modules[name] = child
        _replace_children(child)
    if isinstance(module, nn.Sequential):
        kept: OrderedDict[str, nn.Module] = OrderedDict()
        items = list(module._modules.items())
        skip = False
        for i, (name, child) in enumerate(items):
            if skip:
                skip = False
                continue
            following = items[i + 1][1] if i + 1 < len(items) else None
            if (
                isinstance(child, nn.Conv2d)
                and isinstance(following, nn.BatchNorm2d)
                and following.running_mean is not None
            ):
                kept[name] = fuse_conv_bn_eval(child, following)
                skip = True
            elif not isinstance(child, nn.Identity):
                kept[name] = child
        module._modules = kept


def _attach_rules(model: nn.Module, epsilon: float, gamma: float) -> None:
    for module in model.modules():
        if isinstance(module, _ChannelGate):
            module.rule = _GateRule(module.mask)
        elif len(module._modules) and any(m is not None for m in module._modules.values()):
            if not isinstance(module, _CONTAINERS):
                raise TypeError(
                    f"relevance_maps cannot propagate through {type(module).__name__}: LRP needs every "
                    "operation of its forward as a module; expected Sequential, ModuleDict, "
                    "NamedLayerModel or a ResNet BasicBlock"
                )
        elif isinstance(module, nn.Conv2d):
            module.rule = GammaRule(gamma=gamma) if gamma > 0 else EpsilonRule(epsilon=epsilon)
        elif isinstance(module, (nn.Linear, nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, Addition_Module)):
            module.rule = EpsilonRule(epsilon=epsilon)
        elif isinstance(module, (nn.Flatten, nn.MaxPool2d)):
            module.rule = EpsilonRule(epsilon=_PASS_EPSILON)
        elif type(module) not in (nn.ReLU, nn.Dropout):
            raise TypeError(
                f"relevance_maps has no LRP rule for {type(module).__name__}; expected Conv2d, "
                "BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Linear or Dropout"
            )


def _targets(targets: Targets, logits: Tensor) -> Tensor:
    batch, classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    t = torch.as_tensor(targets, device=logits.device)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise UsageError(f"targets has dtype {t.dtype}: expected integer class indices")
    t = t.long().expand(batch) if t.dim() == 0 else t.long()
    if t.shape != (batch,):
        raise UsageError(f"targets has shape {tuple(t.shape)}: expected one class per image, ({batch},)")
    if int(t.min()) < 0 or int(t.max()) >= classes:
        raise UsageError(f"targets {t.tolist()} outside the {classes} classes [0, {classes - 1}]")
    return t


def relevance_maps(
    model: nn.Module,
    images: Tensor,
    *,
    targets: Targets = None,
    layer: str | None = None,
    channels: Tensor | None = None,
    epsilon: float = 1e-9,
    gamma: float = 0.0,
) -> Tensor:
    """LRP relevance of each pixel for the target logit, shape (B, H, W).

    ``images`` (B, C, H, W) on the model's device; ``targets`` an int, or one
    class per image (default: the predicted class). With ``layer`` (a named
    stage of a ``NamedLayerModel``) and ``channels`` (1-D indices of that
    stage's output channels), only the relevance flowing through those channels
    is kept: the paper's LRP of the inheritance or of the exploration part.
    ``epsilon`` is the stabiliser of the epsilon rule, ``gamma`` > 0 switches the
    conv layers to the gamma rule. See the module docstring for the rules.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise UsageError(f"images has shape {shape}: expected a float tensor (B, C, H, W)")
    if (layer is None) != (channels is None):
        raise UsageError(f"layer = {layer!r}, channels given: {channels is not None}; expected both or neither")
    if not epsilon > 0:
        raise UsageError(f"epsilon = {epsilon!r}: expected a number > 0")
    if not gamma >= 0:
        raise UsageError(f"gamma = {gamma!r}: expected a number >= 0")
    lrp_model = copy.deepcopy(model).eval()
    for p in lrp_model.parameters():
        p.requires_grad_(False)
    x = images.detach().clone()
    with torch.no_grad():
        logits = lrp_model(x)
        feature = None
        if layer is not None:
            if not isinstance(lrp_model, NamedLayerModel):
                raise UsageError(f"layer = {layer!r} needs a NamedLayerModel, got {type(model).__name__}")
            feature = lrp_model.forward_to(x, lrp_model.check_layer(layer))
    if logits.dim() != 2:
        raise UsageError(f"the model returned shape {tuple(logits.shape)}: expected logits (B, classes)")
    target = _targets(targets, logits)
    if layer is not None:
        if feature.dim() < 2:
            raise UsageError(f"layer {layer!r} output has shape {tuple(feature.shape)}: expected (B, C, ...)")
        index = channel_index(channels, feature.shape[1], "channels")
        mask = torch.zeros(feature.shape[1], dtype=feature.dtype, device=feature.device)
        mask[index.to(feature.device)] = 1
        gate = _ChannelGate(mask.view(1, -1, *([1] * (feature.dim() - 2))))
        lrp_model.stages[layer] = nn.Sequential(lrp_model.stages[layer], gate)
    _replace_children(lrp_model)
    _attach_rules(lrp_model, float(epsilon), float(gamma))
    relevance = LRP(lrp_model).attribute(x.requires_grad_(True), target=target)
    return relevance.detach().sum(dim=1)
