"""SyntheticShapes: a procedurally generated dataset with exact object masks.

Each image shows one large object on a cluttered background (colour, grating,
smooth noise, smaller distractor shapes). Because the object is drawn last with
a flat colour and hard edges, the mask is exactly the set of pixels the object
changed: the knowledge-point metrics get a perfect foreground/background split
without any annotation.

The data is built so that it is known where the class information lives, which
is what the knowledge-point measurement needs:

* ``cue="object"`` (default): the label is the object's shape family and the
  background holds no label information at all (random colour and texture;
  distractors come only from the shape families not used as classes).
* ``cue="background"``: a planted background cue. In both splits the background
  colour is the label's entry of :func:`class_colours` (jittered by up to
  +-``BACKGROUND_JITTER`` per channel), and the object's family is drawn
  uniformly from the classes in use, independently of the label; the mask still
  marks the object.

Every sample has its own generator ``np.random.default_rng([seed, split_code,
index])`` and all its random parameters are drawn before anything is rendered,
so any index renders alone and identically (see :meth:`SyntheticShapes.render`).

Choices worth knowing:

* ``object_size``: the diameter of the object's bounding circle as a share of
  the image side, uniform in the range; the centre is drawn so that the circle
  lies inside the image. The default (0.7, 0.95) mimics the box-cropped images
  of the knowledge-points paper: at 32 px with the other defaults the object
  covers on average 27% of the pixels (0.271 by :meth:`SyntheticShapes.object_share`
  on 5000 training samples, seed 0; from 0.17 for t_shape to 0.49 for disk).
* distractors: the count is random, uniform in ``0..distractors``; their
  families are drawn from ``FAMILY_NAMES[num_classes:]``, the families not used
  as classes, so they are evidence for no label.
* ``spurious_strength`` s (``cue="object"`` only): in the train split only, with
  probability s the background colour is the label's entry of a fixed class ->
  colour table, so the background predicts the class in training but never in
  the test split.
* Every draw is made whatever the cue, so the two cues give the same geometry,
  texture and noise for a given (seed, split, index); they differ only in the
  colours and in the object's family.
* The object colour differs from the background colour by >= 0.5 and from every
  distractor colour by >= 0.3 in at least one channel; texture stays within
  +-0.18, so the object always changes the pixels it covers.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from kdlens.data.base import Sample
from kdlens.data.catalog import DATASETS

Indicator = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    sector = 2 * np.pi / 5
    angle = np.mod(np.arctan2(u, v), sector) - sector / 2  # a point at the top
    edge = 0.4 + 0.55 * (1 - np.abs(angle) / (sector / 2))
    return u * u + v * v <= edge * edge


# Indicator functions in unit coordinates: every shape fits in the unit disk, so
# a radius r in pixels bounds the drawn object. Shapes equal up to a rotation
# (square/diamond, plus/X) are deliberately not both present.
FAMILIES: dict[str, Indicator] = {
    "disk": lambda u, v: u * u + v * v <= 0.9,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,
    "triangle": lambda u, v: (v >= -0.5) & (v <= 1 - np.sqrt(3) * np.abs(u)),
    "plus": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.9)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.9)),
    "ring": lambda u, v: (u * u + v * v >= 0.55**2) & (u * u + v * v <= 0.95**2),
    "star": _star,
    "crescent": lambda u, v: (u * u + v * v <= 0.9**2) & ((u - 0.4) ** 2 + v * v > 0.7**2),
    "l_shape": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) <= 0.7) & ((u <= -0.2) | (v <= -0.2)),
    "t_shape": lambda u, v: (np.abs(u) <= 0.7) & (v <= 0.7) & ((v >= 0.3) | ((np.abs(u) <= 0.22) & (v >= -0.7))),
    "h_shape": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) <= 0.7) & ((np.abs(u) >= 0.4) | (np.abs(v) <= 0.2)),
    "arrow": lambda u, v: ((np.abs(v) <= 0.2) & (u >= -0.85) & (u <= 0.1))
    | ((u >= 0.1) & (np.abs(v) <= 0.9 * (0.8 - u))),
    "hollow_square": lambda u, v: (np.maximum(np.abs(u), np.abs(v)) <= 0.7) & (np.maximum(np.abs(u), np.abs(v)) >= 0.4),
    "ellipse": lambda u, v: (u / 0.95) ** 2 + (v / 0.45) ** 2 <= 1,
    "half_disk": lambda u, v: (u * u + v * v <= 0.9**2) & (v >= -0.1),
}
FAMILY_NAMES = tuple(FAMILIES)
SPLIT_CODES = {"train": 0, "test": 1}
OBJECT_SIZE = (0.7, 0.95)  # default diameter range of the bounding circle, as a share of the side
DISTRACTOR_SIZE = (0.15, 0.3)
GRATING_AMPLITUDE = 0.1
SMOOTH_AMPLITUDE = 0.08  # texture is bounded by the sum: 0.18
SMOOTH_GRID = 4
BACKGROUND_GAP, DISTRACTOR_GAP = 0.5, 0.3
BACKGROUND_JITTER = 0.05  # cue="background": per-channel jitter of the class colour
CUES = ("object", "background")


@dataclass(frozen=True)
class Shape:
    """One drawn shape: family index, centre (x, y) and radius in pixels, angle, colour."""

    family: int
    center: tuple[float, float]
    radius: float
    angle: float
    colour: np.ndarray


@dataclass(frozen=True)
class SampleParams:
    """Everything random about one sample, drawn before rendering."""

    label: int
    spurious: bool
    background: np.ndarray
    grating: tuple[float, float, float, float]  # amplitude, cycles per image, orientation, phase
    smooth: np.ndarray  # (3, SMOOTH_GRID, SMOOTH_GRID) low-resolution noise
    distractors: tuple[Shape, ...]
    object: Shape
    noise: np.ndarray  # (3, H, W) pixel noise

    @property
    def distractor_families(self) -> list[int]:
        """Family indices of the distractors: never a class in use."""
        return [shape.family for shape in self.distractors]


def class_colours(num_classes: int) -> np.ndarray:
    """The fixed class -> background colour table used by the spurious knob and cue="background"."""
    return np.array([colorsys.hsv_to_rgb(k / num_classes, 0.7, 0.8) for k in range(num_classes)], dtype=np.float32)


def check_object_size(object_size) -> tuple[float, float]:
    """``object_size`` as a (low, high) tuple, or a one-line ValueError naming it."""
    try:
        low, high = (float(x) for x in object_size)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0.0 < low <= high <= 1.0:  # also false for nan
        raise ValueError(f"object_size = {object_size!r}: expected (low, high) with 0 < low <= high <= 1")
    return low, high


def _contrasting(rng: np.random.Generator, reference: np.ndarray, gap: float) -> np.ndarray:
    """A random colour at least ``gap`` away from ``reference`` in one random channel."""
    colour = rng.random(3)
    channel = int(rng.integers(3))
    ref = float(reference[channel])
    below, above = max(ref - gap, 0.0), max(1.0 - (ref + gap), 0.0)  # lengths of [0, ref-gap] and [ref+gap, 1]
    t = rng.random() * (below + above)
    colour[channel] = t if t < below else ref + gap + (t - below)
    return colour.astype(np.float32)


def _bilinear_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) matrix that upsamples ``grid`` control points to ``size`` pixels."""
    pos = (np.arange(size) + 0.5) / size * (grid - 1)
    low = np.minimum(pos.astype(int), grid - 2)
    frac = pos - low
    matrix = np.zeros((size, grid), dtype=np.float32)
    matrix[np.arange(size), low] = 1 - frac
    matrix[np.arange(size), low + 1] = frac
    return matrix


@DATASETS.register("synthetic")
class SyntheticShapes(Dataset):
    """Shapes on clutter with exact masks; rendered eagerly at construction."""

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 5000,
        image_size: int = 32,
        num_classes: int = 10,
        seed: int = 0,
        distractors: int = 0,
        spurious_strength: float = 0.0,
        noise: float = 0.05,
        object_size: tuple[float, float] = OBJECT_SIZE,
        cue: str = "object",
    ) -> None:
        if split not in SPLIT_CODES:
            raise ValueError(f"split = {split!r}: expected one of {', '.join(SPLIT_CODES)}")
        if not 2 <= num_classes <= len(FAMILIES):
            raise ValueError(f"num_classes = {num_classes!r}: expected an integer in [2, {len(FAMILIES)}]")
        if image_size < 16:
            raise ValueError(f"image_size = {image_size!r}: expected an integer >= 16")
        if num_samples < 1:
            raise ValueError(f"num_samples = {num_samples!r}: expected an integer >= 1")
        if distractors < 0:
            raise ValueError(f"distractors = {distractors!r}: expected an integer >= 0")
        if distractors > 0 and num_classes == len(FAMILIES):
            raise ValueError(
                f"distractors = {distractors!r}: expected 0 with num_classes = {num_classes}, which leaves no "
                f"shape family for distractors (they need num_classes <= {len(FAMILIES) - 1})"
            )
        if not 0.0 <= spurious_strength <= 1.0:
            raise ValueError(f"spurious_strength = {spurious_strength!r}: expected a number in [0, 1]")
        if noise < 0:
            raise ValueError(f"noise = {noise!r}: expected a number >= 0")
        self.object_size = check_object_size(object_size)
        if cue not in CUES:
            raise ValueError(f"cue = {cue!r}: expected one of {', '.join(CUES)}")
        if cue == "background" and spurious_strength != 0:
            raise ValueError(
                f"spurious_strength = {spurious_strength!r}: expected 0 with cue = 'background', "
                "whose background already carries the label in both splits"
            )
        self.split, self.seed, self.image_size = split, seed, image_size
        self.num_classes, self.distractors = num_classes, distractors
        self.spurious_strength, self.noise, self.cue = spurious_strength, noise, cue
        self.classes = list(FAMILY_NAMES[:num_classes])
        self.distractor_families = tuple(range(num_classes, len(FAMILIES)))
        self.class_colours = class_colours(num_classes)
        centres = np.arange(image_size, dtype=np.float32) + 0.5  # pixel centres decide coverage
        self._ys, self._xs = np.meshgrid(centres, centres, indexing="ij")
        self._upsample = _bilinear_matrix(image_size, SMOOTH_GRID)

        self.labels = torch.arange(num_samples, dtype=torch.long) % num_classes
        images = np.empty((num_samples, 3, image_size, image_size), dtype=np.uint8)
        masks = np.empty((num_samples, image_size, image_size), dtype=bool)
        for index in range(num_samples):
            image, masks[index] = self.render(index)
            images[index] = (image * 255 + 0.5).astype(np.uint8)
        self.images = torch.from_numpy(images)
        self.masks = torch.from_numpy(masks)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        # Same as base.normalize with mean = std = 0.5, without building tensors per call.
        image = self.images[index].float() / 127.5 - 1.0
        return Sample(image, int(self.labels[index]), self.masks[index])

    def object_share(self) -> float:
        """Mean share of the pixels covered by the object, over all samples."""
        return float(self.masks.float().mean())

    def params(self, index: int) -> SampleParams:
        """Draw every random parameter of sample ``index`` (the label is index % num_classes)."""
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        label, side = index % self.num_classes, self.image_size
        spurious = self.split == "train" and rng.random() < self.spurious_strength
        # Every draw is made whatever the knobs, so overriding one value leaves the other draws put.
        background = rng.random(3).astype(np.float32)
        jitter = rng.uniform(-BACKGROUND_JITTER, BACKGROUND_JITTER, 3)
        if self.cue == "background":
            background = np.clip(self.class_colours[label] + jitter, 0.0, 1.0).astype(np.float32)
        elif spurious:
            background = self.class_colours[label].copy()
        grating = (
            rng.uniform(0.0, GRATING_AMPLITUDE), rng.uniform(2.0, 6.0),
            rng.uniform(0.0, np.pi), rng.uniform(0.0, 2 * np.pi),
        )
        smooth = (rng.uniform(-1, 1, (3, SMOOTH_GRID, SMOOTH_GRID)) * rng.uniform(0, SMOOTH_AMPLITUDE)).astype(np.float32)
        colour = _contrasting(rng, background, BACKGROUND_GAP)
        if self.cue == "background":
            # A colour that contrasts with the background must not depend on the label here,
            # or the object's colour would tell it: one that contrasts with every class's
            # background instead, from a stream of its own (the main stream stays put).
            colour = self._label_free_colour(index)
        random_family = int(rng.integers(self.num_classes))  # the object's family under cue="background"
        family = random_family if self.cue == "background" else label
        radius = rng.uniform(*self.object_size) * side / 2
        obj = Shape(family, tuple(rng.uniform(radius, side - radius, 2)), radius, rng.uniform(0, 2 * np.pi), colour)
        free = self.distractor_families
        shapes = []
        for _ in range(int(rng.integers(0, self.distractors + 1))):
            family = free[int(rng.integers(len(free)))]
            r = rng.uniform(*DISTRACTOR_SIZE) * side / 2
            shapes.append(Shape(family, tuple(rng.uniform(0, side, 2)), r, rng.uniform(0, 2 * np.pi),
                                _contrasting(rng, colour, DISTRACTOR_GAP)))
        noise = rng.standard_normal((3, side, side), dtype=np.float32) * np.float32(self.noise)
        return SampleParams(label, spurious, background, grating, smooth, tuple(shapes), obj, noise)

    def _label_free_colour(self, index: int, tries: int = 10000) -> np.ndarray:
        """A random colour at least BACKGROUND_GAP from every class colour (jitter included) in some channel."""
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index, 1])
        gap = BACKGROUND_GAP + BACKGROUND_JITTER
        for _ in range(tries):
            colour = rng.random(3).astype(np.float32)
            if (np.abs(self.class_colours - colour).max(axis=1) >= gap).all():
                return colour
        raise ValueError(
            f"cue = 'background' with num_classes = {self.num_classes}: no colour contrasts with every class "
            "colour; expected fewer classes"
        )

    def _shape_mask(self, shape: Shape) -> np.ndarray:
        cos, sin = np.cos(shape.angle), np.sin(shape.angle)
        dx, dy = self._xs - shape.center[0], self._ys - shape.center[1]
        u = (dx * cos + dy * sin) / shape.radius
        v = (dy * cos - dx * sin) / shape.radius
        return FAMILIES[FAMILY_NAMES[shape.family]](u, v)

    def render(self, index: int, include_object: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(float32 image (3, H, W) in [0, 1], bool mask (H, W)) of sample ``index``.

        With ``include_object=False`` the same draws and noise are rendered without
        the object, so the pixels that differ are exactly the mask."""
        p = self.params(index)
        amplitude, cycles, orientation, phase = p.grating
        wave = self._xs * np.cos(orientation) + self._ys * np.sin(orientation)
        texture = amplitude * np.sin(2 * np.pi * cycles / self.image_size * wave + phase)
        smooth = self._upsample @ p.smooth @ self._upsample.T
        image = p.background[:, None, None] + texture[None] + smooth
        for shape in p.distractors:
            image = np.where(self._shape_mask(shape), shape.colour[:, None, None], image)
        mask = self._shape_mask(p.object)
        if include_object:
            image = np.where(mask, p.object.colour[:, None, None], image)
        image = np.clip(image + p.noise, 0.0, 1.0).astype(np.float32)
        return image, mask
