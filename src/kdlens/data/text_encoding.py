"""Turning words into BERT inputs: the WordPiece tokenizer and the (2, T) layout of text samples.

For text the input units are *words*, while BERT reads *pieces*: a WordPiece
tokenizer cuts a rare word into several pieces ("kaleidoscope" -> "ka",
"##lei", ...). A text sample therefore carries, next to the token ids, the
word each token belongs to, so that anything computed per token (a mask, an
attribution) can be gathered back to words:

* row 0 (``TOKEN_ROW``): the token ids ``[CLS] pieces of word 0, pieces of
  word 1, ... [SEP] [PAD] ...``, ``max_tokens`` in all;
* row 1 (``WORD_ROW``): the word index of each token: ``w`` on every piece of
  word ``w`` (0-based), -1 on [CLS], [SEP] and [PAD].

The attention mask is ``row 0 != pad_id(tokenizer)`` (or ``row 1 >= 0`` plus
the [CLS] and [SEP] positions). Words are never cut in half: when the pieces
do not fit in ``max_tokens - 2`` positions, whole words are dropped from the
end and the number of words kept says so. A word the vocabulary cannot spell
is one [UNK] piece, and a word that normalises to nothing (an empty string,
a control character) is one [UNK] too, so every kept word owns at least one
position.

Tokenizers are ``tokenizers.Tokenizer`` objects, BERT-style (lower-casing
:class:`~tokenizers.normalizers.BertNormalizer`,
:class:`~tokenizers.pre_tokenizers.BertPreTokenizer`, WordPiece with "##"
continuation pieces, special tokens [PAD] [UNK] [CLS] [SEP] [MASK]). Words are
encoded with ``is_pretokenized=True``, so the pre-tokenizer may still cut a
word at punctuation ("don't" -> "don", "'", "t") but every piece keeps the
word's index. Special tokens are added here, not by the tokenizer's
post-processor, so a tokenizer loaded from a pretrained BERT directory and one
trained by :func:`train_wordpiece` lay out the same way.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor

from kdlens.errors import DataError, MissingFileError, UsageError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in a trained vocabulary
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKEN_ROW, WORD_ROW = 0, 1
NOT_A_WORD = -1  # the word index of [CLS], [SEP] and [PAD]


class SpecialIds(NamedTuple):
    """The ids of the special tokens a text sample is laid out with."""

    pad: int
    unk: int
    cls: int
    sep: int


class Encoded(NamedTuple):
    """Many sentences encoded: ``tokens`` long (S, 2, max_tokens) in the layout
    of the module docstring, ``masks`` bool (S, max_tokens) True on every piece
    of a foreground word, ``kept`` long (S,) the number of words kept."""

    tokens: Tensor
    masks: Tensor
    kept: Tensor


def is_integer(value: object) -> bool:
    """An int (numpy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The ids of [PAD], [UNK], [CLS] and [SEP] in ``tokenizer``'s vocabulary;
    a UsageError naming the missing ones."""
    ids = {token: tokenizer.token_to_id(token) for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")}
    missing = [token for token, value in ids.items() if value is None]
    if missing:
        raise UsageError(f"tokenizer has no {', '.join(missing)} token; expected a BERT-style vocabulary "
                         "with [PAD], [UNK], [CLS] and [SEP]")
    return SpecialIds(*ids.values())


def pad_id(tokenizer: Tokenizer) -> int:
    """The id of [PAD] (0 in a vocabulary from :func:`train_wordpiece` and in BERT's own)."""
    return special_ids(tokenizer).pad


def _bert_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """Give a WordPiece model BERT's uncased normaliser, pre-tokenizer, decoder
    and [CLS] ... [SEP] post-processor (the latter only for callers who encode
    with the tokenizer directly; this module adds the special tokens itself)."""
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is not None and sep is not None:
        tokenizer.post_processor = processors.BertProcessing(("[SEP]", sep), ("[CLS]", cls))
    return tokenizer


def _checked_sentences(corpus: Iterable[list[str]]) -> list[list[str]]:
    """The corpus as a list, each sentence checked to be a list of strings."""
    sentences = []
    for number, sentence in enumerate(corpus):
        if isinstance(sentence, str) or not all(isinstance(word, str) for word in sentence):
            raise UsageError(f"corpus sentence {number} is {sentence!r:.60}; expected a list of words (strings)")
        sentences.append(list(sentence))
    if not sentences:
        raise UsageError("corpus is empty; expected at least one sentence to train a WordPiece vocabulary on")
    return sentences


def _continuation_alphabet(sentences: list[list[str]]) -> list[str]:
    """Every "##c" piece the trainer will start from, sorted: each character that
    follows another inside a pre-tokenized, normalised word of the corpus."""
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    characters: set[str] = set()
    for word in {word for words in sentences for word in words}:
        for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(word)):
            characters.update(piece[1:])
    return ["##" + character for character in sorted(characters)]


def train_wordpiece(corpus: Iterable[list[str]], vocab_size: int) -> Tokenizer:
    """A lower-casing WordPiece tokenizer trained on ``corpus``, sentences given as lists of words.

    Special tokens [PAD] [UNK] [CLS] [SEP] [MASK] get ids 0 to 4. The
    vocabulary always holds every character of the corpus (alone and, when it
    follows another inside a word, as a "##" piece), so a ``vocab_size`` below
    that comes out larger, and one above what the corpus can fill (every word
    whole) comes out smaller: read the size back with ``get_vocab_size()``.

    Deterministic: the same corpus and ``vocab_size`` give the same vocabulary
    with the same ids, in any process. (tokenizers' trainer numbers the "##"
    characters in hash-map order, which changes from one process to the next
    and, through tie-breaking, which merges win; here they are handed to it
    first, in sorted order, and the vocabulary is then rebuilt so that only
    the five tokens above are special.)"""
    if not (is_integer(vocab_size) and vocab_size > len(SPECIAL_TOKENS)):
        raise UsageError(f"vocab_size = {vocab_size!r}: expected an integer > {len(SPECIAL_TOKENS)}")
    sentences = _checked_sentences(corpus)
    trainer = trainers.WordPieceTrainer(
        vocab_size=int(vocab_size), show_progress=False,
        special_tokens=list(SPECIAL_TOKENS) + _continuation_alphabet(sentences),  # fixed ids, in this order
    )
    trained = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    trained.normalizer = normalizers.BertNormalizer(lowercase=True)
    trained.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trained.train_from_iterator(sentences, trainer)  # each list of words is a batch of pre-split sequences
    tokenizer = Tokenizer(models.WordPiece(trained.get_vocab(with_added_tokens=False), unk_token="[UNK]"))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return _bert_pipeline(tokenizer)


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer`` as ``directory/tokenizer.json`` (tokenizers' format); the path written."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TOKENIZER_FILE
    tokenizer.save(str(path))
    return path


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a local directory: ``tokenizer.json`` (tokenizers'
    format, as written by :func:`save_tokenizer` or shipped with a Hugging Face
    BERT), else a BERT ``vocab.txt`` (read as lower-casing WordPiece, as
    bert-base-uncased). Truncation and padding stored in a tokenizer.json are
    switched off: :func:`encode_words` does both itself. Never downloads."""
    folder = Path(directory)
    expected = f"a directory holding {TOKENIZER_FILE} (tokenizers' format) or a BERT {VOCAB_FILE}"
    if not folder.is_dir():
        raise MissingFileError(f"{str(folder)!r} is not a directory; expected {expected}")
    if (folder / TOKENIZER_FILE).is_file():
        path = folder / TOKENIZER_FILE
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises plain Exceptions for bad JSON
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"{str(path)!r} cannot be read as a tokenizer ({first}); "
                            "expected a tokenizers tokenizer.json") from None
        tokenizer.no_truncation()
        tokenizer.no_padding()
    elif (folder / VOCAB_FILE).is_file():
        path = folder / VOCAB_FILE
        try:
            model = models.WordPiece.from_file(str(path), unk_token="[UNK]")
        except Exception as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"{str(path)!r} cannot be read as a WordPiece vocabulary ({first}); "
                            "expected one token a line") from None
        tokenizer = _bert_pipeline(Tokenizer(model))
    else:
        raise MissingFileError(f"{str(folder)!r} holds neither {TOKENIZER_FILE} nor {VOCAB_FILE}; expected {expected}")
    try:
        special_ids(tokenizer)
    except UsageError as error:
        raise DataError(f"{str(path)!r}: {error}") from None
    return tokenizer


def _check_encoding_arguments(tokenizer: Tokenizer, max_tokens: int) -> SpecialIds:
    if not (is_integer(max_tokens) and max_tokens >= 3):
        raise UsageError(f"max_tokens = {max_tokens!r}: expected an integer >= 3 ([CLS], a piece, [SEP])")
    return check_tokenizer(tokenizer)


def check_tokenizer(tokenizer: Tokenizer) -> SpecialIds:
    """The special ids of ``tokenizer`` once it is known to be a
    ``tokenizers.Tokenizer`` that does not truncate; a UsageError otherwise."""
    if not isinstance(tokenizer, Tokenizer):
        raise UsageError(f"tokenizer is a {type(tokenizer).__name__}; expected a tokenizers.Tokenizer "
                         "(see load_tokenizer and train_wordpiece)")
    if tokenizer.truncation is not None:
        raise UsageError(f"tokenizer truncates to {tokenizer.truncation.get('max_length')} tokens; expected one "
                         "without truncation (tokenizer.no_truncation()): whole words are dropped here instead")
    return special_ids(tokenizer)


def _check_words(words: Sequence[str], where: str) -> list[str]:
    if isinstance(words, str) or not all(isinstance(word, str) for word in words):
        raise UsageError(f"{where} is {words!r:.60}; expected a list of words (strings)")
    return list(words)


def _pieces_by_word(ids: Sequence[int], word_ids: Sequence[int | None], num_words: int,
                    special: SpecialIds) -> list[list[int]]:
    """The token ids of each word, from an encoding's ``ids`` and ``word_ids``;
    [UNK] for a word without pieces."""
    pieces: list[list[int]] = [[] for _ in range(num_words)]
    for token, word in zip(ids, word_ids):
        if word is not None:  # None: a pad or special token the tokenizer itself added
            pieces[word].append(token)
    return [word_pieces or [special.unk] for word_pieces in pieces]


def pieces_of_words(tokenizer: Tokenizer, words: Iterable[str]) -> dict[str, list[int]]:
    """The token ids of each distinct word of ``words`` ([UNK] for a word
    without pieces), each word tokenized on its own, all in one batch: the
    pieces it gets inside a pre-tokenized sentence, as tokenizers encodes each
    word of one on its own."""
    special = special_ids(tokenizer)
    distinct = list(dict.fromkeys(words))
    encodings = tokenizer.encode_batch([[word] for word in distinct], is_pretokenized=True, add_special_tokens=False)
    return {word: _pieces_by_word(encoding.ids, encoding.word_ids, 1, special)[0]
            for word, encoding in zip(distinct, encodings)}


def _lay_out(pieces: Sequence[list[int]], special: SpecialIds, max_tokens: int) -> tuple[list[int], list[int], int]:
    """Token ids and word indices of one sentence in the (2, max_tokens) layout, and the words kept."""
    token_row, word_row = [special.cls], [NOT_A_WORD]
    kept = 0
    for word, word_pieces in enumerate(pieces):
        if len(token_row) + len(word_pieces) > max_tokens - 1:  # keep room for [SEP]
            break
        token_row.extend(word_pieces)
        word_row.extend([word] * len(word_pieces))
        kept += 1
    token_row.append(special.sep)
    word_row.append(NOT_A_WORD)
    padding = max_tokens - len(token_row)
    return token_row + [special.pad] * padding, word_row + [NOT_A_WORD] * padding, kept


def encode_words(tokenizer: Tokenizer, words: list[str], max_tokens: int) -> tuple[Tensor, int]:
    """One sentence as a long (2, max_tokens) tensor in the layout of the module
    docstring, and the number of words kept (``len(words)`` unless whole words
    were dropped from the end to fit)."""
    special = _check_encoding_arguments(tokenizer, max_tokens)
    words = _check_words(words, "words")
    encoding = tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
    pieces = _pieces_by_word(encoding.ids, encoding.word_ids, len(words), special)
    token_row, word_row, kept = _lay_out(pieces, special, max_tokens)
    return torch.tensor([token_row, word_row], dtype=torch.long), kept


def word_mask(encoded: Tensor, foreground: Sequence[bool]) -> Tensor:
    """Bool (T,) mask over the tokens of one encoded sentence ((2, T)): True on
    every piece of word ``w`` where ``foreground[w]``, False on [CLS], [SEP]
    and [PAD]."""
    flags = torch.tensor([bool(flag) for flag in foreground] + [False], dtype=torch.bool)
    return flags[encoded[WORD_ROW]]  # NOT_A_WORD (-1) reads the appended False


def encode_sentences(tokenizer: Tokenizer, sentences: Sequence[list[str]], foreground: Sequence[Sequence[bool]],
                     max_tokens: int) -> Encoded:
    """Many sentences at once with their foreground masks; ``foreground[s][w]``
    says whether word ``w`` of sentence ``s`` is foreground. The same tensors as
    :func:`encode_words` and :func:`word_mask` sentence by sentence, faster:
    each distinct word is tokenized once, in one batch."""
    special = _check_encoding_arguments(tokenizer, max_tokens)
    if len(foreground) != len(sentences):
        raise UsageError(f"foreground has {len(foreground)} entries for {len(sentences)} sentences; "
                         "expected one list of flags a sentence")
    sentences = [_check_words(words, f"sentence {s}") for s, words in enumerate(sentences)]
    for s, (words, flags) in enumerate(zip(sentences, foreground)):
        if len(flags) != len(words):
            raise UsageError(f"foreground of sentence {s} has {len(flags)} flags for {len(words)} words; "
                             "expected one flag a word")
    # encoding every distinct word once gives the same pieces, several times faster
    pieces_of = pieces_of_words(tokenizer, (word for words in sentences for word in words))
    rows = [_lay_out([pieces_of[word] for word in words], special, max_tokens) for words in sentences]
    token_rows = np.array([row[0] for row in rows], dtype=np.int64).reshape(len(rows), max_tokens)
    word_rows = np.array([row[1] for row in rows], dtype=np.int64).reshape(len(rows), max_tokens)
    # flags[s, w] for every word, then one False column that word index -1 reads
    width = max((len(words) for words in sentences), default=0) + 1
    flags = np.zeros((len(rows), width), dtype=bool)
    for s, sentence_flags in enumerate(foreground):
        flags[s, :len(sentence_flags)] = [bool(flag) for flag in sentence_flags]
    masks = np.take_along_axis(flags, word_rows % width, axis=1)
    return Encoded(torch.from_numpy(np.stack([token_rows, word_rows], axis=1)), torch.from_numpy(masks),
                   torch.tensor([row[2] for row in rows], dtype=torch.long))
