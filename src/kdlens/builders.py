"""The objects a config describes: device, datasets, the student's share of the
training data, and networks with seeded initial weights. Training and analysis
both build from here, so they always agree on what a run's models and data are.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import Dataset

from kdlens.config import ExperimentConfig, ModelConfig
from kdlens.data import DATASETS, fraction_subset
from kdlens.errors import ConfigError
from kdlens.models import NamedLayerModel, build_model
from kdlens.seeding import derive_seed


def resolve_device(name: str) -> torch.device:
    """The torch device a config's ``device`` names, or a one-line :class:`ConfigError`
    when this machine does not have it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device = {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device = {name!r}: CUDA is not available here; expected 'auto' or 'cpu'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device = {name!r}: this machine has {count} CUDA device(s); "
                              f"expected cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device = {name!r}: MPS is not available here; expected 'auto' or 'cpu'")
    return device


def build_datasets(config: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """(full training set, test set) for the configured data; each data section
    of the config names its dataset's arguments (``dataset_options``)."""
    data = config.data
    # a section may name its dataset's own split (SST-2's and SQuAD's test set is "dev")
    datasets = tuple(DATASETS.build(data.name, **{"split": split, **data.dataset_options(split, config.seed)})
                     for split in ("train", "test"))
    # text: the model's embedding table (data.vocab_size, or a given tokenizer's own size) must hold
    # every token id; only a tokenizer trained on the data can come out larger than asked
    if getattr(data, "modality", "image") == "text" and data.tokenizer is None:
        if datasets[0].vocab_size > data.vocab_size:
            raise ConfigError(f"data.vocab_size = {data.vocab_size}: the tokenizer trained on the data has "
                              f"{datasets[0].vocab_size} pieces (the corpus's characters need them); expected a "
                              f"vocab_size of at least {datasets[0].vocab_size}")
    return datasets


def student_split(config: ExperimentConfig, full_train: Dataset, fraction: Optional[float] = None) -> Dataset:
    """The fraction of the training set that the student and the baseline
    share: ``data.student_fraction``, or ``fraction`` (a comparison's sample
    rate). The draw depends on the seed only, so a lower fraction's images are
    among a higher one's."""
    share = config.data.student_fraction if fraction is None else fraction
    return fraction_subset(full_train, share, derive_seed(config.seed, "fraction"))


def build_network(model: ModelConfig, config: ExperimentConfig, num_classes: int, init: str) -> NamedLayerModel:
    """A model with initial weights drawn from ``(seed, init)``."""
    torch.manual_seed(derive_seed(config.seed, "init", init))
    sizes = config.data.model_options() if hasattr(config.data, "model_options") else {}
    network = build_model(
        model.arch, num_classes=num_classes, image_size=getattr(config.data, "image_size", None),
        width=model.width, dropout=model.dropout, **{**sizes, **model.options},
    )
    if model.linear_init == "pytorch":
        for module in network.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
    return network
