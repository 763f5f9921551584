"""What every text dataset shares: sentences as lists of words, a foreground
flag per word, labels, and their encoding for BERT (``text_encoding``)."""

from __future__ import annotations

from typing import Sequence

import torch
from tokenizers import Tokenizer
from torch.utils.data import Dataset

from kdlens.data.base import Sample
from kdlens.data.text_encoding import encode_sentences

SENTIMENT_CLASSES = ("negative", "positive")


class TextDataset(Dataset):
    """What both text datasets share: sentences (lists of words), a per-word
    foreground flag, labels, and their encoding for BERT.

    Attributes the rest of kdlens reads: ``classes`` ("negative", "positive"),
    ``labels`` (long tensor), ``modality`` ("text"), ``mean``/``std`` (empty:
    token ids are not normalised; the values exist for the
    :class:`~kdlens.data.base.MaskedDataset` interface), ``tokenizer``,
    ``vocab_size`` (the tokenizer's, the size of a model's embedding table),
    ``max_tokens``. Also ``tokens`` (S, 2, max_tokens), ``masks`` (S,
    max_tokens), ``kept`` (S,), the number of words of each sentence that fit,
    and per sample :meth:`words` and :meth:`foreground_words`."""

    classes = SENTIMENT_CLASSES
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    modality = "text"

    def _encode(self, sentences: Sequence[list[str]], foreground: Sequence[Sequence[bool]], labels: Sequence[int],
                tokenizer: Tokenizer, max_tokens: int) -> None:
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.vocab_size = tokenizer.get_vocab_size()
        self._sentences = [list(words) for words in sentences]
        self._foreground = [[bool(flag) for flag in flags] for flags in foreground]
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.tokens, self.masks, self.kept = encode_sentences(tokenizer, self._sentences, self._foreground, max_tokens)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.tokens[index], int(self.labels[index]), self.masks[index])

    def words(self, index: int) -> list[str]:
        """The words of sample ``index`` that fit in ``max_tokens``, in order
        (word ``w`` is the one whose pieces carry word index ``w``)."""
        return self._sentences[index][:int(self.kept[index])]

    def foreground_words(self, index: int) -> list[bool]:
        """Whether each word of :meth:`words` is foreground."""
        return self._foreground[index][:int(self.kept[index])]
