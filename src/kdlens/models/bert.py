"""BERT through Hugging Face ``transformers``, as kdlens ``NamedLayerModel``s:
``BertForSequenceClassification`` (``bert``, SST-2) and
``BertForQuestionAnswering`` (``bert_qa``, SQuAD).

The networks are transformers' own: this module only cuts them into named
stages so that kdlens can stop at a layer, distil it and measure it.

Input: a text batch ``(B, R, T)`` long, as the text datasets give it: row 0
the token ids (``[CLS] pieces [SEP] ...[PAD]``), row 1 each token's word
index (-1 for special tokens and padding; the model does not read it) and,
when R = 3, row 2 the segment (token type: 0 for the question, 1 for the
context in SQuAD; 0 everywhere when absent). Or, for the knowledge-point
measurement, the *embedded* batch ``(B, T, H + 2)`` float that
``embed_words`` returns: the word-piece embeddings (the output of
``word_embeddings``, where the noise goes, never on token ids) divided by
the embedding table's root mean square (so that a noise scale sigma is in
the same units for every model and checkpoint, as for normalised images),
then the segment and the attention mask as two more channels
(:data:`EXTRA_CHANNELS`). The embedding stage adds the position and
token-type embeddings and normalises, as BERT's own ``inputs_embeds`` path
does, so both inputs give the same output.

Stages (outputs ``(B, T, H + 1)``: the hidden states, zero on padding, with
the attention mask carried along as the last channel, a constant the
distances of distillation and of the measurement never see):

``embeddings``
    BERT's embedding layer (word + position + token type, LayerNorm, dropout).
``layer1`` ... ``layerL``
    the encoder's transformer layers; ``layerL`` is the last hidden layer,
    where the paper measures knowledge points (Sec. 4.1), and the model's
    ``last_hidden`` names it.
``pooler``, ``classifier`` (``bert``)
    the [CLS] token's hidden state through BERT's pooler (dense + tanh),
    ``(B, H)``; then dropout + the linear classifier: the logits.
``spans`` (``bert_qa``)
    BERT's ``qa_outputs`` gives a start and an end logit per token (padding
    set to -10^4); the output is the ``(B, T * T)`` logits of every (start,
    end) pair, ``start[s] + end[e]`` at ``s * T + e``. A span is then one
    class, and the cross-entropy over pairs is exactly the sum of the start
    and the end cross-entropies (transformers' QA loss is their mean), so the
    one classification loop of kdlens trains question answering too, and its
    accuracy is the exact match of both ends.

Sizes: ``vocab_size`` (the tokenizer's), ``max_tokens`` (position
embeddings), ``hidden`` (64), ``layers`` (2), ``heads`` (2),
``intermediate`` (4 x hidden); ``dropout`` is BERT's hidden and attention
dropout (0.1 in BERT). ``width`` scales ``hidden`` and ``intermediate``.
``pretrained``: a local directory written by ``save_pretrained`` (or any
BERT checkpoint directory on disk); the sizes then come from its config.
Nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdlens.errors import MissingFileError, UsageError
from kdlens.models.base import NamedLayerModel
from kdlens.models.catalog import MODELS, check_integer_option, reject_options

TEXT = "text"
# channels of the embedded input after the word-piece embedding: the segment and the attention mask
EXTRA_CHANNELS = 2
# the logit of a padding token as a span's start or end: far below any real one, and finite
PADDING_LOGIT = -1.0e4


def _hidden(x: Tensor) -> tuple[Tensor, Tensor]:
    """(hidden states, attention mask (B, T) in {0, 1}) of a stage's input."""
    return x[..., :-1], x[..., -1]


def _with_mask(hidden: Tensor, mask: Tensor) -> Tensor:
    return torch.cat([hidden * mask[..., None], mask[..., None]], dim=-1)


def _rows(inputs: Tensor) -> Tensor:
    if inputs.dim() != 3 or inputs.shape[1] not in (2, 3) or inputs.is_floating_point():
        raise UsageError(f"a text batch has shape {tuple(inputs.shape)} and dtype {inputs.dtype}; expected "
                         "(B, 2, T) or (B, 3, T) integers: token ids, word indices and optionally segments")
    return inputs


def _segments(inputs: Tensor) -> Tensor:
    return inputs[:, 2] if inputs.shape[1] == 3 else torch.zeros_like(inputs[:, 0])


def embedding_scale(word_embeddings: nn.Embedding) -> Tensor:
    """The root mean square of the word-embedding table: the unit of the measured
    input, as a normalised pixel's standard deviation is for images. BERT starts
    its embeddings at N(0, 0.02^2) and training changes their size; in these units
    a noise scale means the same for every model and checkpoint."""
    return word_embeddings.weight.detach().pow(2).mean().sqrt()


def embed_tokens(word_embeddings: nn.Embedding, inputs: Tensor, pad_id: int) -> Tensor:
    """(B, R, T) token ids, word indices (and segments) -> (B, T, H + 2): the ids'
    word-piece embeddings in units of :func:`embedding_scale`, the segment, and
    the attention mask (1 on every token that is not padding)."""
    ids = _rows(inputs)[:, 0]
    dtype = word_embeddings.weight.dtype
    words = word_embeddings(ids) / embedding_scale(word_embeddings)
    extra = torch.stack([_segments(inputs).to(dtype), (ids != pad_id).to(dtype)], dim=-1)
    return torch.cat([words, extra], dim=-1)


class _Embed(nn.Module):
    def __init__(self, embeddings: nn.Module, pad_id: int) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.pad_id = pad_id

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_floating_point():
            x = embed_tokens(self.embeddings.word_embeddings, x, self.pad_id)
        words = x[..., :-EXTRA_CHANNELS] * embedding_scale(self.embeddings.word_embeddings)
        segments, mask = x[..., -2].round().long(), x[..., -1]
        return _with_mask(self.embeddings(inputs_embeds=words, token_type_ids=segments), mask)


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


class _Spans(nn.Module):
    """(B, T, H + 1) -> (B, T * T): start[s] + end[e] for every pair, padding excluded."""

    def __init__(self, qa_outputs: nn.Linear) -> None:
        super().__init__()
        self.qa_outputs = qa_outputs

    def forward(self, x: Tensor) -> Tensor:
        hidden, mask = _hidden(x)
        start, end = self.qa_outputs(hidden).unbind(-1)
        keep = mask > 0
        start = start.masked_fill(~keep, PADDING_LOGIT)
        end = end.masked_fill(~keep, PADDING_LOGIT)
        return (start[:, :, None] + end[:, None, :]).flatten(1)


class _BertStages(NamedLayerModel):
    """What both BERT heads share: the embedding and encoder stages, the embedded
    input for the measurement, and saving / loading through transformers."""

    input_kind = TEXT
    transformers_class = ""

    def __init__(self, network: nn.Module, head: list[tuple[str, nn.Module]]) -> None:
        config = network.config
        bert = network.bert
        stages = [("embeddings", _Embed(bert.embeddings, config.pad_token_id))]
        stages += [(f"layer{k + 1}", _Layer(layer, config)) for k, layer in enumerate(bert.encoder.layer)]
        super().__init__(stages + head)
        # the transformers model, for save_pretrained; not a child module, so its
        # parameters (the stages' own) are listed once
        object.__setattr__(self, "network", network)
        self.last_hidden = f"layer{len(bert.encoder.layer)}"
        self.stage_ends = [f"stages.{name}" for name in self.layer_names[: 1 + len(bert.encoder.layer)]]

    @property
    def pad_id(self) -> int:
        return int(self.network.config.pad_token_id)

    def embed_words(self, inputs: Tensor) -> Tensor:
        """The float input the measurement perturbs: (B, T, H + 2), see the module doc."""
        return embed_tokens(self.network.bert.embeddings.word_embeddings, inputs, self.pad_id)

    def save_pretrained(self, directory: str | Path) -> None:
        """transformers' ``save_pretrained``: config.json and the weights, loadable by :meth:`from_pretrained`."""
        self.network.save_pretrained(str(directory))

    @classmethod
    def _load(cls, directory: str | Path, **options: Any) -> nn.Module:
        import transformers

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise MissingFileError(f"pretrained = {str(directory)!r} has no config.json; expected a directory "
                                   "written by save_pretrained (config.json and model weights)")
        network_class = getattr(transformers, cls.transformers_class)
        return network_class.from_pretrained(str(directory), local_files_only=True, **options)


class BertClassifier(_BertStages):
    """A ``BertForSequenceClassification`` cut into named stages (see the module doc)."""

    transformers_class = "BertForSequenceClassification"

    def __init__(self, network: nn.Module) -> None:
        super().__init__(network, [("pooler", _Pool(network.bert.pooler)),
                                   ("classifier", nn.Sequential(network.dropout, network.classifier))])

    @classmethod
    def from_pretrained(cls, directory: str | Path, num_classes: Optional[int] = None) -> "BertClassifier":
        """A classifier from a local BERT directory (config.json and weights); nothing is downloaded.
        ``num_classes`` replaces the classifier when it differs from the checkpoint's."""
        options = {} if num_classes is None else {"num_labels": num_classes, "ignore_mismatched_sizes": True}
        return cls(cls._load(directory, **options))


class BertSpans(_BertStages):
    """A ``BertForQuestionAnswering`` cut into named stages, answering with span logits (see the module doc)."""

    transformers_class = "BertForQuestionAnswering"

    def __init__(self, network: nn.Module) -> None:
        super().__init__(network, [("spans", _Spans(network.qa_outputs))])

    @classmethod
    def from_pretrained(cls, directory: str | Path, num_classes: Optional[int] = None) -> "BertSpans":
        """A question-answering BERT from a local directory; nothing is downloaded. ``num_classes``
        (T * T spans) is not a size of the network: its span head fits any T (``bert_qa`` checks T)."""
        return cls(cls._load(directory))


def _bert_config(num_classes: int, width: float, dropout: float, vocab_size: int, max_tokens: int, hidden: int,
                 layers: int, heads: int, intermediate: Optional[int], pad_id: int, arch: str) -> Any:
    from transformers import BertConfig

    for name, value, minimum in (("vocab_size", vocab_size, 2), ("max_tokens", max_tokens, 2), ("hidden", hidden, 1),
                                 ("layers", layers, 1), ("heads", heads, 1)):
        check_integer_option(arch, name, value, minimum)
    size = max(heads, round(hidden * width / heads) * heads)
    inner = max(1, round((intermediate if intermediate is not None else 4 * hidden) * width))
    return BertConfig(vocab_size=vocab_size, hidden_size=size, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=inner, max_position_embeddings=max_tokens, num_labels=num_classes,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=pad_id)


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
    from transformers import BertForSequenceClassification

    config = _bert_config(num_classes, width, dropout, vocab_size, max_tokens, hidden, layers, heads, intermediate,
                          pad_id, "bert")
    return BertClassifier(BertForSequenceClassification(config))


@MODELS.register("bert_qa")
def bert_qa(
    num_classes: int,
    image_size: Optional[int] = None,
    width: float = 1.0,
    dropout: float = 0.1,
    in_channels: int = 3,
    vocab_size: int = 1000,
    max_tokens: int = 128,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    intermediate: Optional[int] = None,
    pad_id: int = 0,
    pretrained: Optional[str] = None,
    **options: Any,
) -> BertSpans:
    """A BERT for extractive question answering; ``num_classes`` must be ``max_tokens ** 2`` (one class a span)."""
    reject_options("bert_qa", options)
    model = BertSpans.from_pretrained(pretrained) if pretrained is not None else None
    positions = max_tokens if model is None else int(model.network.config.max_position_embeddings)
    side = math.isqrt(num_classes)
    if side * side != num_classes or side > positions or (model is None and side != max_tokens):
        raise UsageError(f"bert_qa num_classes = {num_classes}: expected T ** 2 for sentences of T tokens "
                         f"(max_tokens = {max_tokens}, {positions} positions), one class per (start, end) pair")
    if model is not None:
        return model
    from transformers import BertForQuestionAnswering

    config = _bert_config(2, width, dropout, vocab_size, max_tokens, hidden, layers, heads, intermediate, pad_id,
                          "bert_qa")
    return BertSpans(BertForQuestionAnswering(config))


bert.input_kind = TEXT
bert_qa.input_kind = TEXT
