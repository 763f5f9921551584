"""Reading intermediate outputs of a model by module name.

``capture`` hooks arbitrary submodules; ``stage_end_modules`` names the ends of
a model's resolution stages, the points that layer-wise distillation methods
(IE-KD, IEP) tap.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn


def capture(model: nn.Module, inputs: Tensor, module_names: Sequence[str]) -> dict[str, Any]:
    """Run ``model(inputs)`` and return the outputs of the named submodules.

    Names are the dotted names of ``model.named_modules()`` (e.g.
    ``"stages.conv.3"``). A module run more than once in the pass keeps its last
    output; one the pass never reaches is left out. The hooks are removed even
    if the forward pass raises.
    """
    modules = dict(model.named_modules())
    missing = [name for name in module_names if name not in modules]
    if missing:
        hints = "; ".join(_hint(modules, name) for name in missing)
        raise KeyError(f"{type(model).__name__} has no submodule {hints}")
    captured: dict[str, Any] = {}
    handles = []
    try:
        for name in dict.fromkeys(module_names):

            def hook(_module: nn.Module, _args: Any, output: Any, name: str = name) -> None:
                captured[name] = output

            handles.append(modules[name].register_forward_hook(hook))
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: captured[name] for name in dict.fromkeys(module_names) if name in captured}


def _hint(modules: dict[str, nn.Module], name: str) -> str:
    """``name`` and what it may have meant: a full name ending in it, or else the
    names one level below its longest valid prefix."""
    endings = [valid for valid in modules if valid.endswith("." + name)]
    if endings:
        return f"{name!r} (did you mean {endings[0]!r}?)"
    parts = name.split(".")
    prefix = next(
        p for p in (".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)) if p in modules
    )
    children = [f"{prefix}.{c}" if prefix else c for c, _ in modules[prefix].named_children()]
    shown = ", ".join(children[:8]) + (", ..." if len(children) > 8 else "")
    if not prefix:
        return f"{name!r} (names start with: {shown})"
    if not children:
        return f"{name!r} (valid prefix {prefix!r} has no submodules)"
    return f"{name!r} (valid prefix {prefix!r}; below it: {shown})"


def stage_end_modules(model: nn.Module) -> list[str]:
    """Dotted names of the modules that end each resolution stage, shallowest first."""
    try:
        return list(model.stage_ends)
    except AttributeError:
        raise TypeError(f"{type(model).__name__} does not declare its stage_ends") from None
