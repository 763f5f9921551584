"""The run directory: the one thing training and analysis share.

Layout of a run::

    RUN/config.yaml           the resolved config
    RUN/meta.json             seed, package and torch versions, creation time
    RUN/<role>/checkpoints/epoch_000.pt ...   one per epoch, 000 = initialisation
    RUN/<role>/history.json   the metrics of every checkpoint, for people and plots

Every file is written to a temporary name in the same directory and moved into
place with :func:`os.replace`, so a reader (or a resumed run) never sees a
half-written file: a checkpoint either exists completely or not at all.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

CHECKPOINT_PATTERN = re.compile(r"^epoch_(\d{3,})\.pt$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class CheckpointStore:
    """The per-epoch checkpoints of one model (one role) of a run."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.checkpoints = self.directory / "checkpoints"

    def path(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}.pt"

    def epochs(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        found = (CHECKPOINT_PATTERN.match(p.name) for p in self.checkpoints.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> int | None:
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def save(self, epoch: int, state: dict[str, Any]) -> Path:
        path = self.path(epoch)
        atomic_torch_save(state, path)
        return path

    def load(self, epoch: int, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.path(epoch)
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {str(path)!r} does not exist; this run has epochs {self.epochs()}"
            )
        return torch.load(path, map_location=map_location, weights_only=False)

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        for epoch in self.epochs():
            yield epoch, self.load(epoch)

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed writer may have left behind."""
        if self.checkpoints.is_dir():
            for leftover in self.checkpoints.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        atomic_write_json(self.directory / "history.json", rows)


class RunDirectory:
    """A whole experiment: its config, metadata and one store per role."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def role(self, name: str) -> CheckpointStore:
        return CheckpointStore(self.root / name)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def initialise(self, config_text: str, seed: int) -> None:
        """Write the resolved config and metadata, or check that a run being
        resumed was made by the same config (mixing two configs in one run
        directory would make its results meaningless)."""
        from kdlens import __version__

        if self.config_path.is_file():
            existing = self.config_path.read_text()
            if existing != config_text:
                raise ValueError(
                    f"run directory {str(self.root)!r} was made by a different config; "
                    "expected the same config to resume it (use another --out to start a new run)"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, config_text)
        atomic_write_json(
            self.root / "meta.json",
            {
                "seed": seed,
                "kdlens_version": __version__,
                "torch_version": torch.__version__,
                "python_version": platform.python_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
