"""BERT for sentence classification, through Hugging Face ``transformers``
(``BertForSequenceClassification``), as a kdlens ``NamedLayerModel``.

The network is transformers' own: this module only cuts it into named
stages so that kdlens can stop at a layer, distil it and measure it.

Input: a text batch ``(B, 2, T)`` long, as the text datasets give it: row 0
the token ids (``[CLS] pieces [SEP] [PAD]...``), row 1 each token's word
index (-1 for special tokens and padding; the model does not read it). Or,
for the knowledge-point measurement, the *embedded* batch ``(B, T, H + 1)``
float that :meth:`BertClassifier.embed_words` returns: the word-piece
embeddings (the output of ``word_embeddings``, where the noise goes, never
on token ids) divided by the embedding table's root mean square (so that a
noise scale sigma is in the same units for every model and checkpoint, as
for normalised images), with the attention mask as one more channel. The embedding
stage then adds the position and token-type embeddings and normalises, as
BERT's own ``inputs_embeds`` path does, so both inputs give the same output.

Stages (outputs ``(B, T, H + 1)``: the hidden states, zero on padding, with
the attention mask carried along as the last channel, a constant the
distances of distillation and of the measurement never see):

``embeddings``
    BERT's embedding layer (word + position + token type, LayerNorm, dropout).
``layer1`` ... ``layerL``
    the encoder's transformer layers; ``layerL`` is the last hidden layer,
    where the paper measures knowledge points (Sec. 4.1), and
    :attr:`BertClassifier.last_hidden` names it.
``pooler``
    the [CLS] token's hidden state through BERT's pooler (dense + tanh), ``(B, H)``.
``classifier``
    dropout + the linear classifier: the logits.

Sizes: ``vocab_size`` (the tokenizer's), ``max_tokens`` (position
embeddings), ``hidden`` (64), ``layers`` (2), ``heads`` (2),
``intermediate`` (4 x hidden); ``dropout`` is BERT's hidden and attention
dropout (0.1 in BERT). ``width`` scales ``hidden`` and ``intermediate``.
``pretrained``: a local directory written by ``save_pretrained`` (or any
BERT checkpoint directory on disk); the sizes then come from its config.
Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdlens.errors import MissingFileError, UsageError
from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, check_integer_option, reject_options

TEXT = "text"


def _hidden(x: Tensor) -> tuple[Tensor, Tensor]:
    """(hidden states, attention mask (B, T) in {0, 1}) of a stage's input."""
    return x[..., :-1], x[..., -1]


def _with_mask(hidden: Tensor, mask: Tensor) -> Tensor:
    return torch.cat([hidden * mask[..., None], mask[..., None]], dim=-1)


class _Embed(nn.Module):
    def __init__(self, embeddings: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.pad_id = pad_id

    def forward(self, x: Tensor) -> Tensor:
        if x.is_floating_point():  # embed_words' output: scaled word-piece embeddings
            words, mask = _hidden(x)
            words = words * embedding_scale(self.embeddings.word_embeddings)
        else:
            ids = _token_ids(x)
            words, mask = self.embeddings.word_embeddings(ids), (ids != self.pad_id).float()
        return _with_mask(self.embeddings(inputs_embeds=words), mask.to(words.dtype))


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module, config: Any) -> None:
        super().__init__()
        self.layer = layer
        self.config = config

    def forward(self, x: Tensor) -> Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        hidden, mask = _hidden(x)
        attention = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask.long())
        out = self.layer(hidden, attention_mask=attention)
        out = out[0] if isinstance(out, tuple) else out
        return _with_mask(out, mask)


class _Pool(nn.Module):
    def __init__(self, pooler: nn.Module) -> None:
        super().__init__()
        self.pooler = pooler

    def forward(self, x: Tensor) -> Tensor:
        return self.pooler(_hidden(x)[0])


def _token_ids(inputs: Tensor) -> Tensor:
    if inputs.dim() != 3 or inputs.shape[1] != 2:
        raise UsageError(f"a text batch has shape {tuple(inputs.shape)}; expected (B, 2, T): token ids and word indices")
    return inputs[:, 0]


def embedding_scale(word_embeddings: nn.Embedding) -> Tensor:
    """The root mean square of the word-embedding table: the unit of the measured
    input, as a normalised pixel's standard deviation is for images. BERT starts
    its embeddings at N(0, 0.02^2) and training changes their size; in these units
    a noise scale means the same for every model and checkpoint."""
    return word_embeddings.weight.detach().pow(2).mean().sqrt()


def embed_tokens(word_embeddings: nn.Embedding, inputs: Tensor, pad_id: int) -> Tensor:
    """(B, 2, T) token ids and word indices -> (B, T, H + 1): the ids' word-piece
    embeddings in units of :func:`embedding_scale`, and the attention mask (1 on
    every token that is not padding)."""
    ids = _token_ids(inputs)
    mask = (ids != pad_id).to(word_embeddings.weight.dtype)
    words = word_embeddings(ids) / embedding_scale(word_embeddings)
    return torch.cat([words, mask[..., None]], dim=-1)


class BertClassifier(NamedLayerModel):
    """A ``BertForSequenceClassification`` cut into named stages (see the module doc)."""

    input_kind = TEXT

    def __init__(self, network: nn.Module) -> None:
        config = network.config
        bert = network.bert
        stages = [("embeddings", _Embed(bert.embeddings, config.pad_token_id))]
        stages += [(f"layer{k + 1}", _Layer(layer, config)) for k, layer in enumerate(bert.encoder.layer)]
        stages += [("pooler", _Pool(bert.pooler)),
                   ("classifier", nn.Sequential(network.dropout, network.classifier))]
        super().__init__(stages)
        # the transformers model, for save_pretrained; not a child module, so its
        # parameters (the stages' own) are listed once
        object.__setattr__(self, "network", network)
        self.last_hidden = f"layer{len(bert.encoder.layer)}"
        self.stage_ends = [f"stages.{name}" for name in self.layer_names[:-2]]

    @property
    def pad_id(self) -> int:
        return int(self.network.config.pad_token_id)

    def embed_words(self, inputs: Tensor) -> Tensor:
        """The float input the measurement perturbs: (B, T, H + 1), word-piece embeddings and attention mask."""
        return embed_tokens(self.network.bert.embeddings.word_embeddings, inputs, self.pad_id)

    def save_pretrained(self, directory: str | Path) -> None:
        """transformers' ``save_pretrained``: config.json and the weights, loadable by :meth:`from_pretrained`."""
        self.network.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, num_classes: Optional[int] = None) -> "BertClassifier":
        """A classifier from a local BERT directory (config.json and weights); nothing is downloaded.
        ``num_classes`` replaces the classifier when it differs from the checkpoint's."""
        from transformers import BertForSequenceClassification

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise MissingFileError(f"pretrained = {str(directory)!r} has no config.json; expected a directory "
                                   "written by save_pretrained (config.json and model weights)")
        options: dict[str, Any] = {"local_files_only": True}
        if num_classes is not None:
            options.update(num_labels=num_classes, ignore_mismatched_sizes=True)
        return cls(BertForSequenceClassification.from_pretrained(str(directory), **options))


@MODELS.register("bert")
def bert(
    num_classes: int,
    image_size: Optional[int] = None,
    width: float = 1.0,
    dropout: float = 0.1,
    in_channels: int = 3,
    vocab_size: int = 1000,
    max_tokens: int = 64,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: Optional[int] = None,
    pad_id: int = 0,
    pretrained: Optional[str] = None,
    **options: Any,
) -> BertClassifier:
    """A BERT sentence classifier; a small one trained from scratch by default (see the module doc)."""
    reject_options("bert", options)
    if pretrained is not None:
        return BertClassifier.from_pretrained(pretrained, num_classes)
    from transformers import BertConfig, BertForSequenceClassification

    for name, value, minimum in (("vocab_size", vocab_size, 2), ("max_tokens", max_tokens, 2), ("hidden", hidden, 1),
                                 ("layers", layers, 1), ("heads", heads, 1)):
        check_integer_option("bert", name, value, minimum)
    size = max(heads, round(hidden * width / heads) * heads)
    inner = max(1, round((intermediate if intermediate is not None else 4 * hidden) * width))
    config = BertConfig(vocab_size=vocab_size, hidden_size=size, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=inner, max_position_embeddings=max_tokens, num_labels=num_classes,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=pad_id)
    return BertClassifier(BertForSequenceClassification(config))


bert.input_kind = TEXT
