"""The run directory: the one thing training and analysis share.

Layout of a run::

    RUN/config.yaml           the resolved config
    RUN/meta.json             seed, package and torch versions, creation time
    RUN/<role>/checkpoints/epoch_000.pt ...   one per epoch, 000 = initialisation
    RUN/<role>/history.json   the metrics of every checkpoint, for people and plots

Every file is written to a temporary name in the same directory and moved into
place with :func:`os.replace`, so a reader (or a resumed run) never sees a
half-written file: a checkpoint either exists completely or not at all.
Written files get the permissions :func:`open` would give them.

A checkpoint is data, never code: every ``.pt`` file kdlens reads (run
checkpoints, a teacher checkpoint from elsewhere, analysis caches, saved
networks) goes through :func:`load_checkpoint_file`, which unpickles with
``weights_only=True`` (tensors, numbers, strings, lists, dicts and nothing
that could run code), and weights go into a model through
:func:`load_weights`. Both turn every way a file can be wrong into one
:class:`~kdlens.errors.CheckpointError` line that names the file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import platform
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch
from torch import nn

from kdlens.errors import CheckpointError, MissingFileError, UsageError
from kdlens.messages import in_brief

CHECKPOINT_PATTERN = re.compile(r"^epoch_(\d{3,})\.pt$")


def current_umask() -> int:
    """The process's umask, read without changing it.

    ``os.umask`` can only be read by setting it, and another thread creating a
    file in between would get the temporary mask, so Linux's
    ``/proc/self/status`` is read first; the set-and-restore is the fallback."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and :func:`os.replace`.

    The file gets the mode a new file from :func:`open` would get, 0o666 less
    the umask: ``mkstemp`` makes 0600 files whatever the umask, which would
    hide a run's results from the group it is shared with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, mode)
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


def load_checkpoint_file(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    required: Sequence[str] = (),
    kind: str = "checkpoint",
) -> dict[str, Any]:
    """The dict saved in ``path``, read as data only (``weights_only=True``).

    A checkpoint may come from anywhere (``student.teacher_checkpoint``, a run
    directory copied from someone else), and unpickling it with
    ``weights_only=False`` would run whatever code it names. Refused pickles,
    truncated or foreign files, content that is not a dict and dicts without
    the ``required`` keys all raise :class:`CheckpointError` naming the file;
    ``kind`` says in that message what the file was meant to be."""
    path = Path(path)
    where = f"{kind} {str(path)!r}"
    if not path.is_file():
        raise MissingFileError(f"{where} does not exist; expected a file written by kdlens (torch.save)")
    try:
        with warnings.catch_warnings():  # a raw pickle's protocol warning would precede the one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's data-only unpickler names the first global it refused
        # ("... unsupported GLOBAL posix.system ..."); other unpickling
        # failures mean the bytes are no torch checkpoint at all.
        refused = re.search(r"GLOBAL\s+([\w.]+)", str(exc))
        if refused:
            raise CheckpointError(
                f"{where} was refused: it asks to load {refused.group(1)}, and kdlens loads checkpoints as "
                "data only (tensors, numbers, strings, lists, dicts), never as code"
            ) from None
        reason = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
        raise CheckpointError(
            f"{where} is truncated or not a torch checkpoint "
            f"(unpickling failed: {reason.group(1).strip() if reason else in_brief(exc)})"
        ) from None
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise CheckpointError(f"{where} cannot be read: {exc.strerror}") from None
    except Exception as exc:  # noqa: BLE001 - any failure to parse untrusted bytes means a bad file
        # A truncated zip is a RuntimeError ("PytorchStreamReader failed ..."),
        # an empty file an EOFError, text a KeyError: all the same to the user.
        raise CheckpointError(
            f"{where} is truncated or not a torch checkpoint ({in_brief(exc)})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}; expected a dict written by kdlens")
    missing = [key for key in required if key not in obj]
    if missing:
        raise CheckpointError(
            f"{where} has no key {missing[0]!r}; expected a kdlens checkpoint with keys {', '.join(required)}"
        )
    return obj


def weights_mismatch(model: nn.Module, state: Any, *, strict: bool = True) -> Optional[str]:
    """The first reason ``state`` cannot be loaded into ``model``, or None.

    Computed here rather than read from ``load_state_dict``'s error, whose
    first line names only the model class and whose key lists can run to
    hundreds of names."""
    if not isinstance(state, Mapping):
        return f"the weights are a {type(state).__name__}, not a dict of tensors"
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            if strict:
                return f"missing key {key!r}"
            continue
        value = state[key]
        if not isinstance(value, torch.Tensor):
            return f"key {key!r} holds a {type(value).__name__}, not a tensor"
        if value.shape != tensor.shape:
            return f"key {key!r} has shape {tuple(value.shape)}, the model's is {tuple(tensor.shape)}"
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        return f"unexpected key {unexpected[0]!r}"
    return None


def check_weights(model: nn.Module, state: Any, *, source: str, model_name: str, strict: bool = True) -> None:
    """Raise :class:`CheckpointError` unless ``state`` fits ``model``.

    ``source`` names where the weights came from (e.g. ``checkpoint 'x.pt'``),
    ``model_name`` the model they were meant for (e.g. ``vgg11 (width 0.5)``).
    With ``strict=False`` a part of the model's keys may be given."""
    problem = weights_mismatch(model, state, strict=strict)
    if problem is not None:
        raise CheckpointError(f"{source} does not fit the model {model_name}: {problem}")


def load_weights(model: nn.Module, state: Any, *, source: str, model_name: str, strict: bool = True) -> None:
    """Load ``state`` into ``model`` or raise one :class:`CheckpointError` line
    naming ``source``, ``model_name`` and the first mismatch: the one place that
    puts user-supplied weights into a model."""
    check_weights(model, state, source=source, model_name=model_name, strict=strict)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:  # what the key and shape checks above cannot see
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        raise CheckpointError(f"{source} does not fit the model {model_name}: {detail}") from None


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

    def load(
        self, epoch: int, map_location: str | torch.device = "cpu", *, required: Sequence[str] = ()
    ) -> dict[str, Any]:
        """The checkpoint of ``epoch``, read as data (:func:`load_checkpoint_file`);
        a file without one of the ``required`` keys the caller is about to use
        (a foreign file named like a checkpoint) is a :class:`CheckpointError`."""
        path = self.path(epoch)
        if not path.is_file():
            raise MissingFileError(
                f"checkpoint {str(path)!r} does not exist; this run has epochs {self.epochs()}"
            )
        return load_checkpoint_file(path, map_location, required=required)

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

    def initialise(self, config_text: str, seed: int, same: Optional[Callable[[str], bool]] = None) -> None:
        """Write the resolved config and metadata, or check that a run being
        resumed was made by the same config (mixing two configs in one run
        directory would make its results meaningless). ``same(existing text)``
        says whether a config written differently is the same config (one
        written by an earlier kdlens lacks the keys added since, at their
        defaults)."""
        from kdlens import __version__

        if self.config_path.is_file():
            existing = self.config_path.read_text()
            if existing != config_text and not (same is not None and same(existing)):
                raise UsageError(
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
