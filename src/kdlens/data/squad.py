"""SQuAD v1.1 reader for extractive question answering with BERT; never downloads.

Files, under ``root``: ``train-v1.1.json`` and ``dev-v1.1.json``, the
official names and layout: ``{"data": [{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers": [{"text", "answer_start"}, ...]}]}]}]}``
(``title`` is not read). ``file=`` reads another JSON file of that layout
instead; ``split`` then only says which one it is (for the tokenizer below).
A sample is one question.

Words: the question and the context are split by :func:`split_words`: maximal
runs of non-whitespace characters (``str.isspace``), each punctuation
character (ASCII punctuation or a Unicode category P*, as BERT's
BasicTokenizer decides) a word of its own, each word with its character
offsets. Nothing is lower-cased here (the tokenizer does that).

Answer and foreground rule: the FIRST answer of each question is the one used
(train has one; dev has several, and the others are not read). Its characters
are ``[answer_start, answer_start + len(text))``, and ``text`` must be exactly
``context[answer_start:answer_start + len(text)]``. The answer words are the
context words whose character span overlaps those characters (a word the
answer covers only in part counts whole); they are the foreground ("words
related to answers were labeled as foregrounds", the paper), on every one of
their pieces. The question words and the other context words are background.

Sample schema: ``image`` a long (3, max_tokens) tensor laid out as
``[CLS] question pieces [SEP] context pieces [SEP] [PAD]...``:

* row 0 (``TOKEN_ROW``): the token ids;
* row 1 (``WORD_ROW``): the word index of each piece in one numbering, the
  kept question words 0..Q-1 then the kept context words Q..Q+C-1 (see
  :meth:`SQuAD.words`); -1 on [CLS], both [SEP] and [PAD];
* row 2 (``SEGMENT_ROW``): BERT's token type, 0 on [CLS], the question and
  the first [SEP], 1 on the context and the last [SEP], 0 on [PAD].

``mask`` bool (max_tokens,), True on every piece of an answer word. ``label``
the answer span as one class, ``start * max_tokens + end``, where ``start`` is
the position of the first piece of the first answer word and ``end`` that of
the last piece of the last answer word (:func:`span_label`,
:func:`label_span`). A QA model's max_tokens ** 2 pair logits
``start_logit[s] + end_logit[e]`` make cross-entropy over this class the sum
of the start and the end cross-entropies. ``classes`` is a
:class:`SpanClasses` of ``max_tokens ** 2`` names "span(s,e)".

Fitting into ``max_tokens`` (whole words only, deterministic): when
``3 + question pieces + context pieces`` exceeds ``max_tokens``, first the
question keeps its leading words of at most ``max_tokens // 4`` pieces (all of
it when shorter). Then, if the context still does not fit the room left, a
window of whole context words is kept around the answer words: half the room
the answer leaves (rounded down) is filled with the words just before the
answer, as many as fit, then the words after the answer as many as fit the
rest, then more words before the answer if room remains (a window stopped by
the end of the context grows the other way). A question whose answer words
alone do not fit that room is skipped and counted in ``skipped`` (its id in
``skipped_ids``), never silently.

Tokenizer: the one given (a pretrained BERT's, from
:func:`~kdlens.data.text_encoding.load_tokenizer`), else a lower-casing
WordPiece vocabulary of ``vocab_size`` trained on the words of the questions
and the (distinct) contexts of the train file, ``root/train-v1.1.json`` (or
``file=`` for the train split), for the dev split too, so both splits share
it; trained once per process for an unchanged file.

Checked when the dataset is built, each a one-line error naming the file and,
where it has one, the question id: the split's file
(:class:`~kdlens.errors.MissingFileError`), text that is not UTF-8 JSON,
entries missing or of the wrong type, a question without words or without
answers (a SQuAD v2 unanswerable one), a first answer that is not at its
``answer_start`` or covers no word, a file without questions, a file whose
every question is skipped (:class:`~kdlens.errors.DataError`).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tokenizers import Tokenizer

from kdlens.data.catalog import DATASETS
from kdlens.data.imageio import require
from kdlens.data.text_dataset import TextDataset
from kdlens.data.text_encoding import NOT_A_WORD, TOKEN_ROW, WORD_ROW, check_tokenizer
from kdlens.data.text_encoding import is_integer as _is_integer
from kdlens.data.text_encoding import pieces_of_words, train_wordpiece
from kdlens.errors import DataError, UsageError

SPLITS = ("train", "dev")
FILES = {"train": "train-v1.1.json", "dev": "dev-v1.1.json"}
SEGMENT_ROW = 2
VOCAB_SIZE = 8000
MAX_TOKENS = 128
EXPECTED_FILE = ('a SQuAD v1.1 JSON file: {"data": [{"paragraphs": [{"context", "qas": [{"id", "question", '
                 '"answers": [{"text", "answer_start"}]}]}]}]}')
EXPECTED_ROOT = "a directory holding SQuAD v1.1's train-v1.1.json and dev-v1.1.json"

Word = tuple[str, int, int]  # the word, its first character's offset, the offset just after its last


class Question(NamedTuple):
    """One question of a SQuAD file with its first answer; ``context`` is the
    paragraph's text (one string object shared by its questions)."""

    id: str
    question: str
    context: str
    answer_text: str
    answer_start: int


def _is_punctuation(character: str) -> bool:
    """BERT's rule: ASCII punctuation (``$``, ``+``, ``^``, ``` ` ``` included) or a Unicode category P*."""
    code = ord(character)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(character).startswith("P")


_RUN = re.compile(r"\S+")  # re's \s for str patterns is str.isspace


def split_words(text: str) -> list[Word]:
    """The words of ``text`` with their character offsets ``(word, start,
    end)``, ``text[start:end] == word``: maximal runs of non-whitespace
    characters, each punctuation character a word of its own ("Denver's" ->
    "Denver", "'", "s")."""
    words: list[Word] = []
    for run in _RUN.finditer(text):
        chunk, offset = run.group(), run.start()
        if chunk.isalnum():  # letters and digits (categories L*, N*): no punctuation inside, the common case
            words.append((chunk, offset, run.end()))
            continue
        start = 0
        for position, character in enumerate(chunk):
            if _is_punctuation(character):
                if start < position:
                    words.append((chunk[start:position], offset + start, offset + position))
                words.append((character, offset + position, offset + position + 1))
                start = position + 1
        if start < len(chunk):
            words.append((chunk[start:], offset + start, run.end()))
    return words


def answer_words(words: Sequence[Word], start: int, end: int) -> tuple[int, int]:
    """The answer words of the module docstring: the first and one past the
    last index of the words whose span overlaps characters ``[start, end)``;
    ``(0, 0)`` when none does."""
    hits = [index for index, (_, word_start, word_end) in enumerate(words) if word_start < end and word_end > start]
    return (hits[0], hits[-1] + 1) if hits else (0, 0)


def span_label(start: int, end: int, max_tokens: int) -> int:
    """The class of the answer span from token position ``start`` to ``end`` (both included)."""
    return start * max_tokens + end


def label_span(label: int, max_tokens: int) -> tuple[int, int]:
    """The token positions ``(start, end)`` of class ``label``; inverse of :func:`span_label`."""
    return divmod(int(label), max_tokens)


class SpanClasses(Sequence):
    """The ``max_tokens ** 2`` class names of a SQuAD dataset, "span(s,e)" for
    class ``s * max_tokens + e``, without holding them."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = int(max_tokens)

    def __len__(self) -> int:
        return self.max_tokens ** 2

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not _is_integer(index):
            raise TypeError(f"class index {index!r}: expected an integer")
        label = int(index) + (len(self) if index < 0 else 0)
        if not 0 <= label < len(self):
            raise IndexError(f"class {index} outside the {len(self)} span classes")
        start, end = label_span(label, self.max_tokens)
        return f"span({start},{end})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpanClasses) and other.max_tokens == self.max_tokens

    def __hash__(self) -> int:
        return hash((SpanClasses, self.max_tokens))

    def __repr__(self) -> str:
        return f"SpanClasses(max_tokens={self.max_tokens})"


def _entries(path: Path, value: Any, kind: type, what: str, where: str) -> Any:
    """``value`` if it is a ``kind``, else the one-line DataError."""
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{str(path)!r} {where}: {what} is {type(value).__name__} {value!r:.40}; "
                        f"expected a {kind.__name__}, as in {EXPECTED_FILE}")
    return value


def _key(path: Path, entry: dict, key: str, kind: type, where: str) -> Any:
    if key not in entry:
        raise DataError(f"{str(path)!r} {where}: no {key!r} key; expected {EXPECTED_FILE}")
    return _entries(path, entry[key], kind, repr(key), where)


def read_squad(path: str | Path) -> list[Question]:
    """The questions of one SQuAD v1.1 file, each with its first answer,
    checked as the module docstring says; one-line errors naming the file and
    the question id (or, before an id is known, where the entry is)."""
    path = require(Path(path), EXPECTED_FILE)
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{str(path)!r} cannot be read as UTF-8 text ({error}); expected {EXPECTED_FILE}") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{str(path)!r} is not JSON ({error.msg}: line {error.lineno} column {error.colno}); "
                        f"expected {EXPECTED_FILE}") from None
    _entries(path, document, dict, "the document", "top level")
    questions = []
    for a, article in enumerate(_key(path, document, "data", list, "top level")):
        where = f"data[{a}]"
        _entries(path, article, dict, "the article", where)
        for p, paragraph in enumerate(_key(path, article, "paragraphs", list, where)):
            where = f"data[{a}].paragraphs[{p}]"
            _entries(path, paragraph, dict, "the paragraph", where)
            context = _key(path, paragraph, "context", str, where)
            for q, qa in enumerate(_key(path, paragraph, "qas", list, where)):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                _entries(path, qa, dict, "the question entry", where)
                qid = _key(path, qa, "id", str, where)
                where = f"question {qid!r}"
                question = _key(path, qa, "question", str, where)
                if not question.strip():  # str.strip drops what split_words splits on
                    raise DataError(f"{str(path)!r} {where}: the question {question!r:.40} has no words; "
                                    "expected a question")
                answers = _key(path, qa, "answers", list, where)
                if not answers:
                    raise DataError(f"{str(path)!r} {where}: no answers (a SQuAD v2 unanswerable question?); "
                                    f"expected at least one, as in {EXPECTED_FILE}")
                answer = _entries(path, answers[0], dict, "the first answer", where)
                text = _key(path, answer, "text", str, where + " answer 0")
                start = _key(path, answer, "answer_start", int, where + " answer 0")
                found = context[start:start + len(text)] if start >= 0 else None
                if found != text:
                    raise DataError(f"{str(path)!r} {where}: answer {text!r:.60} is not at its answer_start "
                                    f"{start} (context[{start}:{start + len(text)}] is {found!r:.60}); "
                                    "expected the answer's text at answer_start")
                if not text.strip():  # only whitespace: no word overlaps it
                    raise DataError(f"{str(path)!r} {where}: answer {text!r:.60} at {start} covers no word of the "
                                    "context; expected an answer with at least one non-space character")
                questions.append(Question(qid, question, context, text, start))
    if not questions:
        raise DataError(f"{str(path)!r} holds no question; expected {EXPECTED_FILE}")
    return questions


def _word_lists(questions: Sequence[Question]) -> tuple[list[list[Word]], dict[str, list[Word]]]:
    """The words of each question, and of each distinct context (split once, shared by its questions)."""
    contexts = {question.context: split_words(question.context) for question in questions}
    return [split_words(question.question) for question in questions], contexts


@functools.lru_cache(maxsize=4)
def _tokenizer_json(path: str, modified_ns: int, size: int, vocab_size: int) -> str:
    question_words, context_words = _word_lists(read_squad(path))
    corpus = [[word for word, _, _ in words] for words in [*question_words, *context_words.values()]]
    return train_wordpiece(corpus, vocab_size).to_str()


def squad_tokenizer(train_file: str | Path, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A WordPiece tokenizer trained on the words of the questions and the
    contexts of ``train_file`` (a fresh object each call; trained once per
    process while the file is unchanged)."""
    path = require(Path(train_file), EXPECTED_FILE).resolve()
    stat = path.stat()
    return Tokenizer.from_str(_tokenizer_json(str(path), stat.st_mtime_ns, stat.st_size, vocab_size))


def fit_window(question: Sequence[int], context: Sequence[int], answer: tuple[int, int],
               max_tokens: int) -> tuple[int, int, int] | None:
    """The fitting rule of the module docstring on piece counts: ``question[w]``
    and ``context[w]`` are the pieces of each word, ``answer`` the first and one
    past the last answer word of the context. ``(question words kept, first
    context word kept, one past the last)``, or None when the answer does not fit."""
    room = max_tokens - 3  # [CLS] and two [SEP]
    if sum(question) + sum(context) <= room:
        return len(question), 0, len(context)
    kept, used = 0, 0
    for pieces in question:
        if used + pieces > max_tokens // 4:
            break
        kept, used = kept + 1, used + pieces
    room -= used
    if sum(context) <= room:
        return kept, 0, len(context)
    first, end = answer
    spare = room - sum(context[first:end])
    if spare < 0:
        return None
    left = 0
    while first > 0 and left + context[first - 1] <= spare // 2:
        first, left = first - 1, left + context[first - 1]
    spare -= left
    while end < len(context) and context[end] <= spare:
        end, spare = end + 1, spare - context[end]
    while first > 0 and context[first - 1] <= spare:
        first, spare = first - 1, spare - context[first - 1]
    return kept, first, end


@DATASETS.register("squad")
class SQuAD(TextDataset):
    """SQuAD v1.1 questions with their answer words as foreground (see the module docstring).

    Besides :class:`~kdlens.data.text_dataset.TextDataset`'s attributes and
    methods (``tokens`` is (S, 3, max_tokens) here, ``kept`` the words kept,
    question and context together, :meth:`words` and
    :meth:`foreground_words` in the numbering of row 1): ``root``, ``split``,
    ``file`` (the JSON read), ``ids`` (the question id of each sample),
    ``skipped`` (how many questions did not fit), ``skipped_ids``,
    ``context_windows`` ((first, end) of the context words kept, indices into
    ``split_words(context)``), :meth:`question_words`, :meth:`answer_text`.
    ``classes`` is a :class:`SpanClasses` of ``max_tokens ** 2`` names.
    ``vocab_size`` as an argument is the vocabulary to train (ignored when
    ``tokenizer`` is given); as an attribute, the tokenizer's actual size."""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        max_tokens: int = MAX_TOKENS,
        tokenizer: Tokenizer | None = None,
        vocab_size: int = VOCAB_SIZE,
        file: str | Path | None = None,
    ) -> None:
        if split not in SPLITS:
            raise UsageError(f"split = {split!r}: expected one of {', '.join(SPLITS)}")
        if not (_is_integer(max_tokens) and max_tokens >= 5):
            raise UsageError(f"max_tokens = {max_tokens!r}: expected an integer >= 5 "
                             "([CLS], a question piece, [SEP], a context piece, [SEP])")
        if tokenizer is None and not (_is_integer(vocab_size) and vocab_size > 5):
            raise UsageError(f"vocab_size = {vocab_size!r}: expected an integer > 5")
        if root is None and file is None:
            raise UsageError(f"no root and no file for the {split} split; expected root, {EXPECTED_ROOT}, or file")
        self.root = None if root is None else require(Path(root), EXPECTED_ROOT)
        if self.root is not None and not self.root.is_dir():
            raise DataError(f"{str(self.root)!r} is not a directory; expected {EXPECTED_ROOT}")
        self.split = split
        self.file = Path(file) if file is not None else self.root / FILES[split]
        questions = read_squad(self.file)
        if tokenizer is None:
            if split == "train" and file is not None:
                train_file = self.file
            elif self.root is None:
                raise UsageError(f"file = {str(file)!r} for the dev split and no tokenizer: the dev split uses the "
                                 f"train split's tokenizer; expected root, {EXPECTED_ROOT}, or a tokenizer")
            else:
                train_file = self.root / FILES["train"]
            tokenizer = squad_tokenizer(train_file, int(vocab_size))
        self._encode_questions(questions, tokenizer, int(max_tokens))

    def _encode_questions(self, questions: Sequence[Question], tokenizer: Tokenizer, max_tokens: int) -> None:
        special = check_tokenizer(tokenizer)
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.vocab_size = tokenizer.get_vocab_size()
        self.classes = SpanClasses(max_tokens)
        question_words, context_words = _word_lists(questions)
        pieces_of = pieces_of_words(tokenizer, (word for words in [*question_words, *context_words.values()]
                                                for word, _, _ in words))
        tokens = np.full((len(questions), 3, max_tokens), NOT_A_WORD, dtype=np.int64)
        tokens[:, TOKEN_ROW], tokens[:, SEGMENT_ROW] = special.pad, 0
        masks = np.zeros((len(questions), max_tokens), dtype=bool)
        labels, self.ids, self.skipped_ids, self.context_windows = [], [], [], []
        self._sentences, self._foreground, self._questions, self._answers = [], [], [], []
        for question, q_words in zip(questions, question_words):
            c_words = context_words[question.context]
            answer = answer_words(c_words, question.answer_start, question.answer_start + len(question.answer_text))
            q_pieces = [pieces_of[word] for word, _, _ in q_words]
            c_pieces = [pieces_of[word] for word, _, _ in c_words]
            window = fit_window([len(p) for p in q_pieces], [len(p) for p in c_pieces], answer, max_tokens)
            if window is None:
                self.skipped_ids.append(question.id)
                continue
            kept, first, end = window
            row = len(labels)
            token_row, word_row = [special.cls], [NOT_A_WORD]
            for word, pieces in enumerate(q_pieces[:kept]):
                token_row += pieces
                word_row += [word] * len(pieces)
            token_row.append(special.sep)
            word_row.append(NOT_A_WORD)
            segment_row = [0] * len(token_row)
            answer_from, answer_to = kept + answer[0] - first, kept + answer[1] - first  # in the numbering of row 1
            for word, pieces in enumerate(c_pieces[first:end], start=kept):
                if word == answer_from:
                    start = len(token_row)
                token_row += pieces
                word_row += [word] * len(pieces)
                if word == answer_to - 1:
                    stop = len(token_row) - 1
            token_row.append(special.sep)
            word_row.append(NOT_A_WORD)
            segment_row += [1] * (len(token_row) - len(segment_row))
            tokens[row, TOKEN_ROW, :len(token_row)] = token_row
            tokens[row, WORD_ROW, :len(word_row)] = word_row
            tokens[row, SEGMENT_ROW, :len(segment_row)] = segment_row
            masks[row, start:stop + 1] = True
            labels.append(span_label(start, stop, max_tokens))
            words = [word for word, _, _ in q_words[:kept]] + [word for word, _, _ in c_words[first:end]]
            self._sentences.append(words)
            self._foreground.append([answer_from <= w < answer_to for w in range(len(words))])
            self._questions.append(kept)
            self._answers.append(question.answer_text)
            self.ids.append(question.id)
            self.context_windows.append((first, end))
        self.skipped = len(self.skipped_ids)
        if not labels:
            raise DataError(f"{str(self.file)!r}: no question's answer fits max_tokens = {max_tokens} "
                            f"(all {self.skipped} skipped); expected a larger max_tokens")
        self.tokens = torch.from_numpy(tokens[:len(labels)])
        self.masks = torch.from_numpy(masks[:len(labels)])
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.kept = torch.tensor([len(words) for words in self._sentences], dtype=torch.long)

    def question_words(self, index: int) -> int:
        """How many of :meth:`words` of sample ``index`` are question words (the first ones)."""
        return self._questions[index]

    def answer_text(self, index: int) -> str:
        """The text of the (first) answer of sample ``index``, as the file gives it."""
        return self._answers[index]
