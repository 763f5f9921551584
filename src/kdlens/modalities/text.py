"""Text: a sample is a (2, T) long tensor, the token ids (``[CLS] pieces
[SEP] [PAD]...``) and each token's word index (-1 for special tokens and
padding), or (3, T) with the segment as a third row (question answering),
with a (T,) foreground mask over the tokens. A unit is a word: all
of its word pieces and all of their embedding dimensions share one sigma
(the paper's Sec. 4.1 for BERT). The noise goes on the word-piece
embeddings, the output of the model's embedding lookup, never on token ids;
special tokens, padding and the segment and attention-mask channels of the
embedded input are in no unit and get no noise. Sentences have different numbers of words,
so the unit map is one per sample (``units.UnitMap``)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from kdlens.errors import UsageError
from kdlens.modalities.base import MODALITIES, Modality
from kdlens.models.bert import EXTRA_CHANNELS
from kdlens.report.word_maps import sentence_maps


def words_of(tokens: Tensor, tokenizer: Any) -> list[list[str]]:
    """The words of each sample of a (B, 2, T) batch, rebuilt from its word pieces
    (WordPiece's ``##`` continuation marks dropped)."""
    sentences = []
    for ids, index in zip(tokens[:, 0].tolist(), tokens[:, 1].tolist()):
        words: list[str] = []
        for token, word in zip(ids, index):
            if word < 0:
                continue
            piece = tokenizer.id_to_token(token) if tokenizer is not None else str(token)
            if word == len(words):
                words.append(piece)
            else:
                words[word] += piece.removeprefix("##")
        sentences.append(words)
    return sentences


class TextModality(Modality):
    name = "text"
    sample_schema = ("tokens (2, T) long: token ids and word indices (-1: special token or padding), and for "
                     "question answering the segments as a third row; mask (T,) bool")

    def units(self, sample_shape: Sequence[int], grid: int) -> Tensor:
        raise UsageError("the units of text are the words of each sentence; expected batch_units(inputs, ...), "
                         "not one map for every sample")

    def analysed(self, model: Any, inputs: Tensor) -> Tensor:
        """The model's word-piece embeddings with the segment and the attention mask as two last channels,
        (B, T, H + 2)."""
        embed = getattr(model, "embed_words", None)
        if embed is None:
            raise UsageError(f"{type(model).__name__} takes no text: expected a text model (bert) with embed_words")
        return embed(inputs)

    def batch_units(self, inputs: Tensor, analysed: Tensor, grid: int) -> Tensor:
        """(B, T, H + 2): every embedding dimension of a token carries its word's index;
        special tokens, padding and the segment and mask channels carry -1 (no unit, no noise)."""
        if inputs.dim() != 3 or inputs.shape[1] not in (2, 3):
            raise UsageError(f"a text batch has shape {tuple(inputs.shape)}; expected (B, 2, T) or (B, 3, T)")
        words = inputs[:, 1].long()
        units = words[:, :, None].expand(*words.shape, analysed.shape[-1]).clone()
        units[..., -EXTRA_CHANNELS:] = -1
        return units

    def foreground(self, masks: Tensor, units: Tensor, rule: float) -> Tensor:
        """A word is foreground when its pieces are (they share one label; ``rule`` changes nothing)."""
        words = units[..., 0]
        n = int(words.max()) + 1
        on = masks.bool() & (words >= 0)
        labels = torch.zeros(words.shape[0], n, dtype=torch.bool, device=words.device)
        rows = torch.arange(words.shape[0], device=words.device)[:, None].expand_as(words)
        labels[rows[on], words[on]] = True
        return labels

    def report_inputs(self, inputs: Tensor, masks: Tensor, dataset: Any) -> dict[str, Any]:
        """The sentences as words, and which words are foreground."""
        units = inputs[:, 1][:, :, None]
        return {"words": words_of(inputs, getattr(dataset, "tokenizer", None)),
                "word_labels": self.foreground(masks, units, 1.0)}

    def unit_layout(self, count: int, grid: int, n_units: int) -> tuple[int, ...]:
        return (count, n_units)

    def unit_maps(self, layer: str, maps: Mapping[str, Any], estimator: str) -> tuple[bytes, str]:
        """Each sentence with its words shaded by entropy and the knowledge points marked."""
        return (sentence_maps(layer, maps, estimator=estimator),
                f"Knowledge points on the sentences at {layer} ({estimator} estimator): shade = entropy (dark = "
                "information kept); foreground knowledge points boxed orange, background ones blue, "
                "foreground words underlined")

    def describe_units(self, grid: int) -> str:
        return "one unit per word"


MODALITIES.register("text")(TextModality)
