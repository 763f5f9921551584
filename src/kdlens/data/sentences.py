"""SyntheticSentences: a built-in synthetic binary sentiment dataset of words, no download.

The text counterpart of :mod:`kdlens.data.synthetic`, a stand-in for SST-2
(:mod:`kdlens.data.sst2`): each sample is one sentence whose input units are
its words. A sentence is 8 to 14 words (``LENGTH``, uniform), all told:

* 2 or 3 planted sentiment words (``PLANTED``, uniform), distinct, all of one
  polarity, drawn from ``POSITIVE_WORDS`` or ``NEGATIVE_WORDS`` (plain English,
  each with a VADER valence of at least 1 in absolute value, of its list's
  sign). These are the foreground (the "object") under both cues.
* neutral filler from ``FILLER_WORDS`` (short, common, none in VADER's
  lexicon), drawn with replacement; with probability ``RARE_PROBABILITY``
  one filler slot holds a word of ``RARE_WORDS`` instead (long and rare:
  "kaleidoscope", "thermodynamics"..., which a small WordPiece vocabulary
  cuts into several pieces, as a real tokenizer does with rare words);
* under ``cue="filler"``, one filler slot holds the label's cue word,
  ``CUE_WORDS[label]`` ("table" for negative, "window" for positive), two
  neutral words used nowhere else.

The words are then shuffled into a uniformly random order. Where the class
information lives (``cue``), as in the image dataset:

* ``cue="sentiment"`` (default): the planted words have the label's polarity;
  the label is decided by them.
* ``cue="filler"``: the planted words' polarity (one for the whole sentence)
  is uniform, independent of the label, and only the cue word, background
  like the rest of the filler, tells the label. The mask still marks the
  sentiment words, so a model that solves the task looks at the background.

Sample schema: :class:`~kdlens.data.base.Sample` with ``image`` a long
(2, max_tokens) tensor, the token ids and each token's word index (see
:mod:`kdlens.data.text_encoding`), ``mask`` bool (max_tokens,), True on every
piece of a sentiment word, False on everything else including [CLS], [SEP]
and [PAD], and ``label`` 0 (negative) or 1 (positive).

Tokenizer: when none is given, a lower-casing WordPiece vocabulary of
``vocab_size`` trained (:func:`~kdlens.data.text_encoding.train_wordpiece`)
on the first ``TOKENIZER_SENTENCES`` sentences of the *train* stream of
``seed`` and ``cue``, whatever the split and ``num_samples``: a test split
rebuilds that corpus itself and gets the very tokenizer its train split has.
At the default ``vocab_size`` (900) every filler, sentiment and cue word is
one piece and most rare words several; as a sentence holds at most one rare
word (at most 14 letters, so at most 14 pieces), it takes at most 13 + 14
pieces and always fits the default ``max_tokens`` (32, with [CLS] and [SEP]).
A smaller vocabulary splits more words (sentiment words included) and may
drop whole words at the end of long sentences: ``kept`` says how many stayed.

Determinism: sample ``index`` of ``split`` draws everything from
``np.random.default_rng([seed, split_code, index])`` (:func:`generate_sentence`,
the same draws under both cues), so equal arguments give equal datasets and
the train and test splits are different streams. The label of sample
``index`` is ``index % 2`` (balanced classes). Generated eagerly at
construction.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

from kdlens.data.catalog import DATASETS
from kdlens.data.text_dataset import SENTIMENT_CLASSES as CLASSES, TextDataset
from kdlens.data.text_encoding import is_integer as _is_integer, train_wordpiece
from kdlens.errors import UsageError

SPLIT_CODES = {"train": 0, "test": 1}
CUES = ("sentiment", "filler")
LENGTH = (8, 14)  # words in a sentence, both ends included
PLANTED = (2, 3)  # sentiment words in a sentence, both ends included
RARE_PROBABILITY = 0.25
TOKENIZER_SENTENCES = 2000
VOCAB_SIZE = 900
MAX_TOKENS = 32

POSITIVE_WORDS = tuple("""
good great wonderful excellent amazing lovely beautiful brilliant delightful fantastic superb charming
enjoyable pleasant happy joyful perfect terrific marvelous splendid best nice fun sweet glad love fabulous
outstanding awesome admire impressive gorgeous cheerful hilarious inspiring thrilling magnificent elegant
graceful remarkable exciting satisfying engaging clever funny
""".split())
NEGATIVE_WORDS = tuple("""
bad awful terrible horrible boring dull poor worst ugly stupid painful annoying dreadful miserable sad
disappointing dismal lousy pathetic hopeless weak useless dumb messy nasty gross hate unpleasant crappy horrid
worse worthless ridiculous joyless lame irritating depressing disgusting failure mess tragic
""".split())
FILLER_WORDS = tuple("""
the a an this that these those it its of in on at by for from with about into over under between through
during before after above below near behind beside across along around toward and or but so then also just
still only very quite rather almost again often he she they we you i him her them us his their our your my
is was are were be been has had have do does did will would can could should may might one two three four
five six seven eight nine ten first second third man woman person people child family group team city town
village street road bridge river lake hill valley forest field garden park house room door wall floor roof
kitchen office school station market shop bank hotel church car bus train boat ship plane truck wheel chair
desk bed lamp shelf box bag bottle cup plate bowl spoon fork knife book page letter paper pencil pen map
clock phone camera water stone sand wood metal glass iron steel wool paint morning evening night day week
month year hour minute summer winter autumn north south east west left right middle corner edge side bottom
red blue green yellow brown gray black white orange purple walk walked run ran sit sat stand stood open
opened carry bring brought move moved turn turned read write wrote say said tell told ask asked look looked
see saw make made take took give gave put set keep kept begin began show showed call called film movie story
scene actor script plot chapter character episode sequel series studio version
""".split())
RARE_WORDS = tuple("""
photosynthesis archipelago thermodynamics quadrilateral paleontology chromosome encyclopedia infrastructure
metropolitan cartography hydraulic aluminium configuration perpendicular circumference hemisphere kilometre
municipality constellation administration refrigerator thermometer choreography accordion saxophone
xylophone kaleidoscope rhinoceros hippopotamus chrysanthemum parliamentary meteorological longitude latitude
bureaucracy
""".split())
CUE_WORDS = ("table", "window")  # the filler cue of class 0 (negative) and class 1 (positive)


@dataclass(frozen=True)
class SentenceInfo:
    """One generated sentence and where its information lives: ``foreground[w]``
    marks the planted sentiment words, ``polarity`` is theirs (1 positive, 0
    negative; equal to ``label`` under cue="sentiment"), ``cue_position`` the
    cue word's place under cue="filler" (-1 otherwise)."""

    words: tuple[str, ...]
    foreground: tuple[bool, ...]
    label: int
    polarity: int
    cue_position: int


def generate_sentence(seed: int, split: str, index: int, cue: str = "sentiment") -> SentenceInfo:
    """Sentence ``index`` of ``split``, from its own seed alone. The draws, in
    order, are the same under both cues, so the cue changes only what it must:
    length, number of planted words, a random polarity, the planted words of
    each polarity, the filler, whether and which rare word, the order."""
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    label = index % len(CLASSES)
    length = int(rng.integers(LENGTH[0], LENGTH[1] + 1))
    planted = int(rng.integers(PLANTED[0], PLANTED[1] + 1))
    random_polarity = int(rng.integers(2))
    polarity = label if cue == "sentiment" else random_polarity
    choices = {sign: rng.choice(len(words), planted, replace=False)
               for sign, words in ((0, NEGATIVE_WORDS), (1, POSITIVE_WORDS))}
    sentiment = [(NEGATIVE_WORDS, POSITIVE_WORDS)[polarity][int(j)] for j in choices[polarity]]
    others = [FILLER_WORDS[int(j)] for j in rng.integers(len(FILLER_WORDS), size=length - planted)]
    has_rare, rare = bool(rng.random() < RARE_PROBABILITY), int(rng.integers(len(RARE_WORDS)))
    if has_rare:
        others[-1] = RARE_WORDS[rare]
    if cue == "filler":
        others[0] = CUE_WORDS[label]  # others holds at least LENGTH[0] - PLANTED[1] = 5 words
    words = sentiment + others
    flags = [True] * planted + [False] * len(others)
    order = [int(j) for j in rng.permutation(length)]
    cue_position = order.index(planted) if cue == "filler" else -1
    return SentenceInfo(tuple(words[j] for j in order), tuple(flags[j] for j in order), label, polarity,
                        cue_position)


@functools.lru_cache(maxsize=16)
def _tokenizer_json(seed: int, cue: str, vocab_size: int) -> str:
    corpus = [list(generate_sentence(seed, "train", index, cue).words) for index in range(TOKENIZER_SENTENCES)]
    return train_wordpiece(corpus, vocab_size).to_str()


def synthetic_tokenizer(seed: int, cue: str = "sentiment", vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """The tokenizer :class:`SyntheticSentences` trains when given none: WordPiece
    on the first ``TOKENIZER_SENTENCES`` train sentences of ``seed`` and ``cue``.
    A fresh object each call (trained once per process and argument set)."""
    return Tokenizer.from_str(_tokenizer_json(seed, cue, vocab_size))


@DATASETS.register("sentences")
class SyntheticSentences(TextDataset):
    """Synthetic sentiment sentences (see the module docstring); generated eagerly.

    Besides :class:`TextDataset`'s attributes: ``cue``, ``seed``, ``split``,
    ``polarities`` (long (S,), the planted words' polarity, equal to
    ``labels`` under cue="sentiment") and ``cue_positions`` (long (S,), the
    cue word's index among the words under cue="filler", -1 otherwise).
    ``vocab_size`` as an argument is the vocabulary to train (ignored when
    ``tokenizer`` is given); as an attribute, the tokenizer's actual size."""

    def __init__(
        self,
        split: str = "train",
        num_samples: int = 5000,
        seed: int = 0,
        cue: str = "sentiment",
        max_tokens: int = MAX_TOKENS,
        vocab_size: int = VOCAB_SIZE,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        if split not in SPLIT_CODES:
            raise UsageError(f"split = {split!r}: expected one of {', '.join(SPLIT_CODES)}")
        if cue not in CUES:
            raise UsageError(f"cue = {cue!r}: expected one of {', '.join(CUES)}")
        if not (_is_integer(num_samples) and num_samples >= 1):
            raise UsageError(f"num_samples = {num_samples!r}: expected an integer >= 1")
        if not _is_integer(seed):
            raise UsageError(f"seed = {seed!r}: expected an integer")
        self.split, self.seed, self.cue = split, int(seed), cue
        if tokenizer is None:
            if not (_is_integer(vocab_size) and vocab_size > 5):
                raise UsageError(f"vocab_size = {vocab_size!r}: expected an integer > 5")
            tokenizer = synthetic_tokenizer(self.seed, cue, int(vocab_size))
        infos = [generate_sentence(self.seed, split, index, cue) for index in range(num_samples)]
        self.polarities = torch.tensor([info.polarity for info in infos], dtype=torch.long)
        self.cue_positions = torch.tensor([info.cue_position for info in infos], dtype=torch.long)
        self._encode([list(info.words) for info in infos], [info.foreground for info in infos],
                     [info.label for info in infos], tokenizer, max_tokens)
