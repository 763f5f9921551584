"""The SQuAD v1.1 reader on tiny fixtures written here: word splitting with
offsets, the answer words as foreground on every piece (one of them cut into
several by a small WordPiece vocabulary), the span label, the segment and
word rows, the fitting window, the tokenizer the dev split shares, and
one-line errors for bad files."""

import json

import pytest
import torch

from kdlens.data import DATASETS
from kdlens.data.squad import (
    FILES,
    SEGMENT_ROW,
    SQuAD,
    SpanClasses,
    fit_window,
    label_span,
    read_squad,
    span_label,
    split_words,
)
from kdlens.data.text_dataset import TextDataset
from kdlens.data.text_encoding import NOT_A_WORD, TOKEN_ROW, WORD_ROW, pieces_of_words, special_ids
from kdlens.errors import DataError, MissingFileError, UsageError

MUSEUM = "Denver's team visited the kaleidoscope museum in 2016. It was fun, and the team was happy."
NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
           "seventeen eighteen nineteen twenty twentyone twentytwo twentythree twentyfour twentyfive twentysix "
           "twentyseven twentyeight twentynine thirty")
COMMON = "the team was happy and it was fun in the museum . " * 6  # frequent words stay whole pieces


def qa(qid, question, context, *answers):
    return {"id": qid, "question": question,
            "answers": [{"text": text, "answer_start": context.index(text)} for text in answers]}


def squad_file(path, paragraphs):
    """``paragraphs``: (context, [qa, ...]) pairs, written as one article."""
    document = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": context, "qas": questions} for context, questions in paragraphs]}]}
    path.write_text(json.dumps(document))
    return path


TRAIN = [
    (MUSEUM, [qa("q-museum", "Where did Denver's team go?", MUSEUM, "the kaleidoscope museum"),
              qa("q-year", "When did the team visit?", MUSEUM, "2016"),
              qa("q-part", "Which museum?", MUSEUM, "aleidoscope muse")]),  # cuts two words: both count whole
    (NUMBERS, [qa("q-twenty", "what number comes after nineteen and before twentyone ?", NUMBERS, "twenty"),
               qa("q-long", "which numbers ?", NUMBERS, NUMBERS.split(" twentyone")[0])]),
    (COMMON, [qa("q-common", "who was happy ?", COMMON, "the team")]),
]
ANSWER_WORDS = {"q-museum": ["the", "kaleidoscope", "museum"], "q-year": ["2016"],
                "q-part": ["kaleidoscope", "museum"], "q-twenty": ["twenty"], "q-common": ["the", "team"]}
DEV = [(MUSEUM, [qa("d-fun", "How was it?", MUSEUM, "fun", "was fun")]),
       ("Zebras graze quietly.", [qa("d-zebra", "What grazes?", "Zebras graze quietly.", "Zebras")])]


T = 64  # max_tokens where the museum paragraph fits whole


@pytest.fixture
def root(tmp_path):
    squad_file(tmp_path / FILES["train"], TRAIN)
    squad_file(tmp_path / FILES["dev"], DEV)
    return tmp_path


@pytest.fixture
def train(root):
    return SQuAD(root, "train", max_tokens=T, vocab_size=120)


def pieces(tokenizer, word):
    return tokenizer.encode([word], is_pretokenized=True, add_special_tokens=False).ids


def test_split_words_keeps_offsets():
    text = "  Denver's 1990s-era (U.S.) team,\tcost $5—¿no?\n"
    words = split_words(text)
    assert [word for word, _, _ in words] == ["Denver", "'", "s", "1990s", "-", "era", "(", "U", ".", "S", ".",
                                              ")", "team", ",", "cost", "$", "5", "—", "¿", "no", "?"]
    assert all(text[start:end] == word for word, start, end in words)
    assert words[0] == ("Denver", 2, 8) and words[3] == ("1990s", 11, 16)
    assert split_words("") == [] and split_words(" \n ") == [] and split_words("Élan") == [("Élan", 0, 4)]


def test_answer_words_are_foreground_on_every_piece(train):
    tokenizer = train.tokenizer
    assert len(pieces(tokenizer, "kaleidoscope")) > 1  # the small vocabulary cuts the answer word
    i = train.ids.index("q-museum")
    image, label, mask = train[i]
    assert image.shape == (3, T) and image.dtype == torch.long and mask.shape == (T,) and mask.dtype == torch.bool
    words, flags = train.words(i), train.foreground_words(i)
    assert [word for word, flag in zip(words, flags) if flag] == ["the", "kaleidoscope", "museum"]
    assert sum(flags) == 3 and train.answer_text(i) == "the kaleidoscope museum"
    answer_ids = [w for w, flag in enumerate(flags) if flag]
    assert mask.tolist() == [w in answer_ids for w in image[WORD_ROW].tolist()]
    expected = [t for word in ["the", "kaleidoscope", "museum"] for t in pieces(tokenizer, word)]
    assert image[TOKEN_ROW][mask].tolist() == expected
    start, end = label_span(label, train.max_tokens)
    positions = mask.nonzero().flatten().tolist()
    assert (start, end) == (positions[0], positions[-1]) and positions == list(range(start, end + 1))
    assert label == span_label(start, end, T) == start * T + end
    assert train.classes[label] == f"span({start},{end})"
    # an answer that cuts words makes them foreground whole
    j = train.ids.index("q-part")
    assert [w for w, f in zip(train.words(j), train.foreground_words(j)) if f] == ["kaleidoscope", "museum"]


def test_segments_and_word_numbering(train):
    special = special_ids(train.tokenizer)
    i = train.ids.index("q-museum")
    tokens, words, segments = train[i].image.tolist()
    q, n = train.question_words(i), len(train.words(i))
    assert q == len(split_words("Where did Denver's team go?")) == 8  # Where did Denver ' s team go ?
    assert n == q + len(split_words(MUSEUM)) and train.kept[i] == n  # it all fits
    first, last = tokens.index(special.sep), len(tokens) - 1 - tokens[::-1].index(special.sep)
    assert tokens[0] == special.cls and first < last and tokens[last + 1:] == [special.pad] * (T - 1 - last)
    assert segments == [0] * (first + 1) + [1] * (last - first) + [0] * (T - 1 - last)
    assert words[0] == words[first] == words[last] == NOT_A_WORD and set(words[last + 1:]) == {NOT_A_WORD}
    assert sorted(set(words[1:first])) == list(range(q)) and sorted(set(words[first + 1:last])) == list(range(q, n))
    assert words[1:last] == sorted(words[1:first]) + [NOT_A_WORD] + sorted(words[first + 1:last])  # in order
    for w, word in enumerate(train.words(i)):  # every word whole, its pieces in order
        assert [t for t, v in zip(tokens, words) if v == w] == pieces(train.tokenizer, word)


def test_fit_window_rule():
    question, context = [1] * 10, [1] * 30
    assert fit_window([1] * 3, [1] * 10, (4, 5), 16) == (3, 0, 10)  # everything fits: nothing cut
    assert fit_window(question, context, (14, 16), 20) == (5, 9, 21)  # question to 20 // 4, 5 words each side
    assert fit_window(question, context, (1, 2), 20) == (5, 0, 12)  # the start stops the left, the right grows
    assert fit_window(question, context, (28, 30), 20) == (5, 18, 30)  # the end stops the right, the left grows
    assert fit_window([3, 3], [1] * 30, (14, 16), 20) == (1, 8, 22)  # whole question words: 3 of 5 pieces
    assert fit_window([1] * 4, [1] * 8, (0, 1), 16) == (4, 0, 8)  # the question alone is cut only when needed
    assert fit_window([1], [2, 2, 2, 2, 2], (1, 3), 9) == (1, 1, 3)  # 5 pieces of room: the answer's 4, no more
    assert fit_window(question, [1] * 13 + [13] + [1] * 16, (13, 14), 20) is None  # the answer alone: 13 > 12


def test_truncation_keeps_the_answer_and_counts_the_skipped(root):
    data = SQuAD(root, "train", max_tokens=24, vocab_size=120)
    assert data.skipped == 1 and data.skipped_ids == ["q-long"] and "q-long" not in data.ids
    assert len(data) == len(data.ids) == 5
    for i in range(len(data)):
        image, label, mask = data[i]
        tokens, words, _ = image.tolist()
        assert sum(1 for w in words if 0 <= w < data.question_words(i)) <= 24 // 4  # no context fits whole
        for w, word in enumerate(data.words(i)):  # whole words
            assert [t for t, v in zip(tokens, words) if v == w] == pieces(data.tokenizer, word)
        answer = [word for word, flag in zip(data.words(i), data.foreground_words(i)) if flag]
        assert answer == ANSWER_WORDS[data.ids[i]]
        start, end = label_span(label, 24)
        assert mask.nonzero().flatten().tolist() == list(range(start, end + 1))
    i = data.ids.index("q-twenty")
    first, end = data.context_windows[i]
    context = [word for word, _, _ in split_words(NUMBERS)]
    assert 0 < first and end < len(context) and first < context.index("twenty") < end  # cut on both sides
    assert data.words(i)[data.question_words(i):] == context[first:end]
    assert data.question_words(i) < len(split_words(TRAIN[1][1][0]["question"]))  # the question was cut


def test_dev_uses_the_train_tokenizer_and_the_first_answer(root, train):
    dev = SQuAD(root, "dev", max_tokens=T, vocab_size=120)
    assert dev.tokenizer.to_str() == train.tokenizer.to_str() and dev.skipped == 0
    i = dev.ids.index("d-fun")
    assert dev.answer_text(i) == "fun"
    assert [w for w, f in zip(dev.words(i), dev.foreground_words(i)) if f] == ["fun"]
    # with a tokenizer given, neither root nor the train file is needed
    alone = SQuAD(split="dev", file=root / FILES["dev"], tokenizer=train.tokenizer, max_tokens=T)
    assert torch.equal(alone.tokens, dev.tokens) and alone.ids == dev.ids
    with pytest.raises(UsageError, match="train split's tokenizer"):
        SQuAD(split="dev", file=root / FILES["dev"])
    (root / FILES["train"]).unlink()
    with pytest.raises(MissingFileError, match="train-v1.1.json"):
        SQuAD(root, "dev", vocab_size=120)


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(MissingFileError, match="train-v1.1.json"):
        SQuAD(tmp_path, "train")
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [}')
    with pytest.raises(DataError, match="not JSON") as error:
        read_squad(bad)
    assert "bad.json" in str(error.value) and "\n" not in str(error.value)
    cases = [
        ([(MUSEUM, [{"id": "q-noquestion", "answers": []}])], "q-noquestion.*'question'"),
        ([(MUSEUM, [{"id": "q-shifted", "question": "Where?",
                     "answers": [{"text": "museum", "answer_start": MUSEUM.index("museum") + 1}]}])],
         "q-shifted.*not at its answer_start"),
        ([(MUSEUM, [{"id": "q-v2", "question": "Why?", "answers": []}])], "q-v2.*no answers"),
        ([(MUSEUM, [{"id": "q-blank", "question": "Why?", "answers": [{"text": " ", "answer_start": 8}]}])],
         "q-blank.*covers no word"),
        ([(MUSEUM, [{"question": "Why?", "answers": []}])], r"qas\[0\].*'id'"),
    ]
    for paragraphs, message in cases:
        squad_file(bad, paragraphs)
        with pytest.raises(DataError, match=message) as error:
            SQuAD(split="train", file=bad, vocab_size=120)
        assert "bad.json" in str(error.value) and "\n" not in str(error.value)
    bad.write_text(json.dumps({"data": [{"title": "T"}]}))
    with pytest.raises(DataError, match="'paragraphs'"):
        read_squad(bad)


def test_built_by_name(root):
    data = DATASETS.build("squad", split="train", root=root, max_tokens=48, vocab_size=120)
    assert isinstance(data, SQuAD) and isinstance(data, TextDataset) and len(data) == 5 and data.skipped == 1
    assert data.modality == "text" and data.mean == () and data.std == () and data.max_tokens == 48
    assert len(data.classes) == 48 ** 2 and data.classes == SpanClasses(48) and data.classes[-1] == "span(47,47)"
    assert data.vocab_size == data.tokenizer.get_vocab_size() and data.tokens.shape == (5, 3, 48)
    assert int(data.labels.max()) < len(data.classes) and data.file == root / FILES["train"]
    assert (data[0].image[SEGMENT_ROW] >= 0).all()
    # the shared helper gives each distinct word's pieces, as the tokenizer gives them
    assert pieces_of_words(data.tokenizer, ["Museum", "kaleidoscope", "Museum"]) == {
        "Museum": pieces(data.tokenizer, "museum"), "kaleidoscope": pieces(data.tokenizer, "kaleidoscope")}
