"""Background points for point clouds, as the knowledge-points paper builds them.

Benchmark point clouds (ModelNet40) hold one object and nothing else, so the
knowledge-point metrics would have no background to compare the foreground
with. Section 4.1 of the paper builds one: for each object, draw five point
clouds whose labels differ from the object's, take 500 points at random from
their union, and attach them to the object as background points.
:func:`attach_background` does exactly that, as a pure function of its inputs
and a ``torch.Generator``.

Sample schema for point clouds: kdlens reuses :class:`~kdlens.data.base.Sample`,
with ``image`` the cloud as float32 (N, 3) and ``mask`` bool (N,), True on the
object's points, so the training loop's ``(inputs, labels, masks)`` unpacking
keeps working. (The field names are the image ones for now.)

Placement. Every cloud, the object's and each background cloud, is first put in
the unit sphere by :func:`to_unit_sphere` (centroid at the origin, farthest
point at distance 1), and the background points keep exactly those
coordinates: they overlap the object's volume. The paper mentions no
translation or scaling of the background, only that the points are
"attached", and every ModelNet40 cloud lives in the unit sphere, so overlaying
is the reading that matches it. It is also the one that keeps the task honest:
had the background been moved aside (a shell around the object, an offset),
any model could tell foreground from background by position alone, and the
foreground/background split of knowledge points would measure where points
are rather than what the network learned about shapes.

Point order. By default the object and background points are shuffled
together (the mask follows them). Point networks are meant to be permutation
invariant, but not every model is, and some layers are order-sensitive in
practice (farthest-point sampling starts from point 0): with the object always
first, the order alone would say which points are foreground.

Where a draw needs more items than exist (fewer than five clouds of other
classes in a tiny pool, fewer than 500 points in the union), every item is
used once before any is used again (see :func:`draw_indices`); real data never
comes near that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from kdlens.errors import UsageError

BACKGROUND_POINTS = 500
BACKGROUND_CLOUDS = 5


def unit_sphere(points: np.ndarray) -> np.ndarray:
    """Clouds (..., N, 3), each moved so that its centroid is the origin and
    scaled so that its farthest point is at distance 1 (the usual ModelNet40
    normalisation); a cloud of coincident points is only centred. In numpy:
    several times faster than torch on clouds this small."""
    centred = points - points.mean(axis=-2, keepdims=True)
    radius = np.sqrt((centred * centred).sum(axis=-1).max(axis=-1, keepdims=True))[..., None]
    return centred / np.where(radius > 0, radius, 1.0).astype(points.dtype)


def to_unit_sphere(points: Tensor) -> Tensor:
    """:func:`unit_sphere` of a tensor (..., N, 3), in its dtype and device."""
    return torch.from_numpy(unit_sphere(points.detach().cpu().numpy())).to(points)


def draw_indices(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` indices into ``range(n)``, drawn without replacement while that is
    possible: when ``k > n``, whole random permutations follow one another, so
    every index is used once before any is used twice. Needs ``n >= 1``."""
    if n < 1:
        raise UsageError(f"cannot draw {k} of 0 items; expected at least one item to draw from")
    rounds = -(-k // n)  # ceil(k / n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(rounds)])[:k]


class CloudPool(Protocol):
    """Where background clouds come from. ``num_classes`` is the number of
    labels; ``draw`` returns ``count`` clouds (each (M, 3), already normalised)
    with their classes, each class among ``classes``."""

    num_classes: int

    def draw(self, classes: Sequence[int], count: int, generator: torch.Generator) -> list[tuple[Tensor, int]]: ...


@dataclass(frozen=True)
class GeneratedPool:
    """Clouds made on demand: ``make(class_index, generator)`` returns a fresh
    cloud of that class (the synthetic dataset's shape families). The class of
    each drawn cloud is uniform among the allowed classes, with replacement,
    so five clouds may share a class, as five random shapes of a large dataset
    may."""

    num_classes: int
    make: Callable[[int, torch.Generator], Tensor]

    def draw(self, classes: Sequence[int], count: int, generator: torch.Generator) -> list[tuple[Tensor, int]]:
        if not classes:
            raise UsageError("no class to draw background clouds from; expected at least one allowed class")
        picks = torch.randint(len(classes), (count,), generator=generator).tolist()
        return [(self.make(int(classes[p]), generator), int(classes[p])) for p in picks]


@dataclass(frozen=True)
class IndexedPool:
    """A fixed collection of clouds, e.g. the shapes of one dataset split:
    ``labels[i]`` is the class of member ``i`` and ``cloud(i)`` its cloud.
    Drawn members are distinct and uniform among those of the allowed classes
    (so a class is drawn as often as the data holds it, as in the paper, which
    samples point clouds, not classes)."""

    labels: Tensor
    cloud: Callable[[int], Tensor]
    num_classes: int

    def draw(self, classes: Sequence[int], count: int, generator: torch.Generator) -> list[tuple[Tensor, int]]:
        allowed = torch.as_tensor(list(classes), dtype=self.labels.dtype)
        members = torch.nonzero(torch.isin(self.labels, allowed)).flatten()
        if len(members) == 0:
            raise UsageError(
                f"the pool of {len(self.labels)} clouds has none of classes {sorted(set(map(int, classes)))}; "
                "expected at least one cloud of another class than the object's"
            )
        chosen = members.index_select(0, draw_indices(len(members), count, generator)).tolist()
        return [(self.cloud(i), int(self.labels[i])) for i in chosen]


@dataclass(frozen=True)
class WithBackground:
    """An object cloud with its background attached.

    ``points`` (N_obj + B, 3) float32; ``mask`` (N_obj + B,) bool, True on the
    object's points; ``source`` (N_obj + B,) long: -1 on object points, else
    which background cloud the point came from (an index into ``classes``);
    ``classes``: the class of each background cloud drawn."""

    points: Tensor
    mask: Tensor
    source: Tensor
    classes: tuple[int, ...]

    def point_classes(self, object_class: int) -> Tensor:
        """The class of the cloud each point came from (``object_class`` on the object)."""
        table = torch.tensor([*self.classes, object_class], dtype=torch.long)
        return table[self.source]  # source -1 picks the last entry, the object's class


def merge_background(
    object_points: Tensor,
    clouds: Sequence[tuple[Tensor, int]],
    generator: torch.Generator,
    num_points: int = BACKGROUND_POINTS,
    shuffle: bool = True,
) -> WithBackground:
    """Take ``num_points`` points at random from the union of ``clouds`` and
    append them, coordinates unchanged, to ``object_points``; shuffle all
    points together when ``shuffle``. ``clouds``: (cloud (M, 3), class) pairs."""
    n_obj = len(object_points)
    if clouds and num_points > 0:
        union = torch.cat([cloud.to(torch.float32) for cloud, _ in clouds])
        owner = torch.cat([torch.full((len(cloud),), k, dtype=torch.long) for k, (cloud, _) in enumerate(clouds)])
        picked = draw_indices(len(union), num_points, generator)
        background, origin = union.index_select(0, picked), owner.index_select(0, picked)
    else:
        background, origin = object_points.new_zeros((0, 3), dtype=torch.float32), torch.zeros(0, dtype=torch.long)
    points = torch.cat([object_points.to(torch.float32), background])
    mask = torch.cat([torch.ones(n_obj, dtype=torch.bool), torch.zeros(len(background), dtype=torch.bool)])
    source = torch.cat([torch.full((n_obj,), -1, dtype=torch.long), origin])
    if shuffle:
        # index_select, not points[order]: advanced indexing of a few thousand
        # floats goes multi-threaded and was 1000x slower on a busy 2-core machine.
        order = torch.randperm(len(points), generator=generator)
        points, mask, source = (t.index_select(0, order) for t in (points, mask, source))
    return WithBackground(points.contiguous(), mask, source, tuple(int(c) for _, c in clouds))


def attach_background(
    object_points: Tensor,
    label: int,
    pool: CloudPool,
    generator: torch.Generator,
    num_points: int = BACKGROUND_POINTS,
    num_clouds: int = BACKGROUND_CLOUDS,
    shuffle: bool = True,
) -> WithBackground:
    """The paper's construction: ``num_clouds`` clouds of classes other than
    ``label`` from ``pool``, ``num_points`` points at random from their union,
    attached to ``object_points`` (N_obj, 3) as background.

    The same inputs and generator state give the same result. ``num_points = 0``
    attaches nothing (the mask is then all True)."""
    if object_points.ndim != 2 or object_points.shape[1] != 3 or len(object_points) == 0:
        raise UsageError(f"object_points of shape {tuple(object_points.shape)}: expected (N, 3) with N >= 1")
    if num_points < 0:
        raise UsageError(f"num_points = {num_points!r}: expected an integer >= 0")
    if num_clouds < 1:
        raise UsageError(f"num_clouds = {num_clouds!r}: expected an integer >= 1")
    if not 0 <= label < pool.num_classes:
        raise UsageError(f"label = {label!r}: expected a class in [0, {pool.num_classes})")
    if num_points == 0:
        return merge_background(object_points, [], generator, 0, shuffle)
    others = [c for c in range(pool.num_classes) if c != label]
    if not others:
        raise UsageError(f"a pool of {pool.num_classes} class(es) has no class other than label {label}; "
                         "expected at least two classes for background clouds")
    clouds = pool.draw(others, num_clouds, generator)
    return merge_background(object_points, clouds, generator, num_points, shuffle)
