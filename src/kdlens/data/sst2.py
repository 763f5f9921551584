"""SST-2 reader (GLUE's layout) with a lexicon foreground; never downloads.

Files, under ``root``: ``train.tsv`` and ``dev.tsv`` as GLUE distributes
them, a header line naming the columns ``sentence`` and ``label`` (tab
separated, in any order; GLUE's is ``sentence<TAB>label``), then one sentence
and its label a line, label 0 (negative) or 1 (positive). GLUE's
``test.tsv`` has no labels and is refused. Blank lines are skipped. The words
of a sentence are its text split on whitespace: GLUE's SST-2 text is already
tokenized and lower-cased ("it 's a charming and often affecting journey . ").

Foreground rule: a word is foreground when its lower-cased form is an entry
of VADER's lexicon (``vader_lexicon.txt`` of the installed vaderSentiment
package, the word as VADER itself looks it up) with an absolute mean valence
of at least ``lexicon_threshold`` (default 1.0). Nothing else counts: no
negation, no context, no stemming ("good" 1.9 is foreground, "goodness" is
an entry of its own, "like" 1.5 is foreground even as a preposition).

Sample schema and attributes as :class:`~kdlens.data.text_dataset.TextDataset`:
``image`` a long (2, max_tokens) tensor of token ids and word indices (see
:mod:`kdlens.data.text_encoding`), ``mask`` bool (max_tokens,) True on every
piece of a foreground word, ``label`` 0 or 1, classes ("negative",
"positive"); sentences too long for ``max_tokens`` lose whole words at the
end (``kept``, :meth:`~kdlens.data.text_dataset.TextDataset.words`).

Tokenizer: the one given (a pretrained BERT's, from
:func:`~kdlens.data.text_encoding.load_tokenizer`), else a lower-casing
WordPiece vocabulary of ``vocab_size`` trained on the sentences of
``train.tsv`` (for the dev split too, so both splits share it; trained once
per process for an unchanged file).

Checked when the dataset is built, each a one-line error naming the file and
line: the root and the split's file (:class:`~kdlens.errors.MissingFileError`),
text that is not UTF-8, a header without a ``sentence`` or ``label`` column, a
line with another number of fields than the header, an empty sentence, a
label other than 0 or 1, a file without sentences
(:class:`~kdlens.errors.DataError`).
"""

from __future__ import annotations

import functools
import math
import numbers
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer

from kdlens.data.catalog import DATASETS
from kdlens.data.imageio import require
from kdlens.data.text_dataset import TextDataset
from kdlens.data.text_encoding import is_integer as _is_integer
from kdlens.data.text_encoding import train_wordpiece
from kdlens.errors import DataError, UsageError

SPLITS = ("train", "dev")
COLUMNS = ("sentence", "label")
LEXICON_THRESHOLD = 1.0
VOCAB_SIZE = 8000
MAX_TOKENS = 64
EXPECTED_FILE = "a GLUE SST-2 file: a header 'sentence<TAB>label', then a sentence and its 0/1 label a line"
EXPECTED_ROOT = "a directory holding GLUE's SST-2 train.tsv and dev.tsv"


@functools.lru_cache(maxsize=1)
def vader_lexicon() -> dict[str, float]:
    """VADER's lexicon, entry -> mean valence, read from the installed
    vaderSentiment package as VADER reads it (the file lists a few entries
    twice, "ok" 1.6 then 1.2; the later one wins)."""
    try:
        text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        raise UsageError("vaderSentiment is not installed; expected it for the SST-2 foreground rule "
                         "(pip install vaderSentiment)") from None
    lexicon = {}
    for line in text.rstrip("\n").split("\n"):  # parsed as VADER parses it: a later duplicate wins
        fields = line.strip().split("\t")
        if len(fields) >= 2:
            lexicon[fields[0]] = float(fields[1])
    return lexicon


def is_sentiment_word(word: str, threshold: float = LEXICON_THRESHOLD) -> bool:
    """The foreground rule of the module docstring for one word."""
    valence = vader_lexicon().get(word.lower())
    return valence is not None and abs(valence) >= threshold


def read_sst2(path: str | Path) -> tuple[list[list[str]], list[int]]:
    """The sentences (lists of words) and labels of one SST-2 .tsv file; one-line errors naming file and line."""
    path = require(Path(path), EXPECTED_FILE)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{str(path)!r} cannot be read as UTF-8 text ({error}); expected {EXPECTED_FILE}") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]  # not splitlines: \x1c and kin are not line ends here
    header = [name.strip() for name in lines[0].split("\t")]
    for column in COLUMNS:
        if column not in header:
            raise DataError(f"{str(path)!r} line 1: header {lines[0]!r:.80} has no {column!r} column; "
                            f"expected {EXPECTED_FILE}")
    sentence_at, label_at = header.index("sentence"), header.index("label")
    sentences, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(f"{str(path)!r} line {number}: {len(fields)} tab-separated fields; expected "
                            f"{len(header)}, as the header {'<TAB>'.join(header)!r}")
        words, label = fields[sentence_at].split(), fields[label_at].strip()
        if not words:
            raise DataError(f"{str(path)!r} line {number}: empty sentence; expected at least one word")
        if label not in ("0", "1"):
            raise DataError(f"{str(path)!r} line {number}: label {label!r}; expected 0 (negative) or 1 (positive)")
        sentences.append(words)
        labels.append(int(label))
    if not sentences:
        raise DataError(f"{str(path)!r} holds no sentence; expected {EXPECTED_FILE}")
    return sentences, labels


@functools.lru_cache(maxsize=4)
def _tokenizer_json(path: str, modified_ns: int, size: int, vocab_size: int) -> str:
    sentences, _ = read_sst2(path)
    return train_wordpiece(sentences, vocab_size).to_str()


def sst2_tokenizer(train_file: str | Path, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A WordPiece tokenizer trained on the sentences of ``train_file`` (a fresh
    object each call; trained once per process while the file is unchanged)."""
    path = require(Path(train_file), EXPECTED_FILE).resolve()
    stat = path.stat()
    return Tokenizer.from_str(_tokenizer_json(str(path), stat.st_mtime_ns, stat.st_size, vocab_size))


@DATASETS.register("sst2")
class SST2(TextDataset):
    """GLUE SST-2 sentences with VADER-lexicon foreground words (see the module docstring).

    Besides :class:`~kdlens.data.text_dataset.TextDataset`'s attributes:
    ``root``, ``split``, ``file`` (the .tsv read), ``lexicon_threshold``.
    ``vocab_size`` as an argument is the vocabulary to train (ignored when
    ``tokenizer`` is given); as an attribute, the tokenizer's actual size."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        max_tokens: int = MAX_TOKENS,
        tokenizer: Tokenizer | None = None,
        vocab_size: int = VOCAB_SIZE,
        lexicon_threshold: float = LEXICON_THRESHOLD,
    ) -> None:
        if split == "test":
            raise UsageError("split = 'test': GLUE's SST-2 test.tsv has no labels; expected 'train' or 'dev'")
        if split not in SPLITS:
            raise UsageError(f"split = {split!r}: expected one of {', '.join(SPLITS)}")
        if not (isinstance(lexicon_threshold, numbers.Real) and not isinstance(lexicon_threshold, bool)
                and math.isfinite(lexicon_threshold) and lexicon_threshold >= 0):
            raise UsageError(f"lexicon_threshold = {lexicon_threshold!r}: expected a finite number >= 0")
        if tokenizer is None and not (_is_integer(vocab_size) and vocab_size > 5):
            raise UsageError(f"vocab_size = {vocab_size!r}: expected an integer > 5")
        self.root = require(Path(root), EXPECTED_ROOT)
        if not self.root.is_dir():
            raise DataError(f"{str(self.root)!r} is not a directory; expected {EXPECTED_ROOT}")
        self.split, self.lexicon_threshold = split, float(lexicon_threshold)
        self.file = self.root / f"{split}.tsv"
        sentences, labels = read_sst2(self.file)
        if tokenizer is None:
            tokenizer = sst2_tokenizer(self.root / "train.tsv", int(vocab_size))
        flag = {word: is_sentiment_word(word, self.lexicon_threshold) for word in {w for ws in sentences for w in ws}}
        foreground = [[flag[word] for word in words] for words in sentences]
        self._encode(sentences, foreground, labels, tokenizer, max_tokens)
