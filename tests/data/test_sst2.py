"""The SST-2 reader on tiny GLUE-layout fixtures written here: the lexicon
foreground rule on words whose VADER valence is known (vader_lexicon.txt:
good 1.9, terrible -2.1, boring -1.3, like 1.5, top 0.8, fine 0.8), the
tokenizer both splits share, and one-line errors for bad files."""

import pytest
import torch

from kdlens.data.sentences import TextDataset
from kdlens.data.sst2 import SST2, is_sentiment_word, read_sst2, vader_lexicon
from kdlens.data.text_encoding import encode_words, save_tokenizer, train_wordpiece
from kdlens.errors import DataError, MissingFileError, UsageError

TRAIN = [
    ("it 's a good film , not a terrible one . ", 1),
    ("a boring , top-heavy mess ", 0),
    ("i like the top scene ", 1),
    ("the film is fine ", 1),
    ("terrible ", 0),
]
DEV = [("a good , fine film ", 1), ("boring and terrible ", 0)]


def write(path, rows, header="sentence\tlabel"):
    path.write_text(header + "\n" + "".join(f"{sentence}\t{label}\n" for sentence, label in rows))
    return path


@pytest.fixture
def root(tmp_path):
    write(tmp_path / "train.tsv", TRAIN)
    write(tmp_path / "dev.tsv", DEV)
    return tmp_path


def test_the_lexicon_is_vaders():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lexicon = vader_lexicon()
    assert lexicon == SentimentIntensityAnalyzer().lexicon  # duplicates resolved as VADER does ("ok": 1.2)
    assert (lexicon["good"], lexicon["terrible"], lexicon["boring"], lexicon["top"]) == (1.9, -2.1, -1.3, 0.8)
    assert is_sentiment_word("good") and is_sentiment_word("Terrible") and not is_sentiment_word("top")
    assert is_sentiment_word("top", threshold=0.8) and not is_sentiment_word("film", threshold=0.0)


def test_reads_sentences_labels_and_foreground(root):
    data = SST2(root, "train", max_tokens=24)
    assert isinstance(data, TextDataset) and len(data) == 5
    assert data.labels.tolist() == [1, 0, 1, 1, 0] and data.file == root / "train.tsv"
    assert data.words(0) == ["it", "'s", "a", "good", "film", ",", "not", "a", "terrible", "one", "."]
    assert data.foreground_words(0) == [False, False, False, True, False, False, False, False, True, False, False]
    assert data.foreground_words(1) == [False, True, False, False, True]  # boring -1.3, mess -1.5
    assert data.foreground_words(2) == [False, True, False, False, False]  # like 1.5 yes, top 0.8 no
    sample = data[0]
    assert sample.image.shape == (2, 24) and sample.image.dtype == torch.long and sample.label == 1
    assert sample.mask.dtype == torch.bool and sample.mask.shape == (24,)
    assert data.modality == "text" and tuple(data.classes) == ("negative", "positive")
    assert data.mean == () and data.std == () and data.max_tokens == 24
    assert data.vocab_size == data.tokenizer.get_vocab_size()


def test_the_threshold_moves_the_foreground(root):
    strict, loose = SST2(root, lexicon_threshold=2.0, max_tokens=24), SST2(root, lexicon_threshold=0.8, max_tokens=24)
    assert strict.foreground_words(0)[3] is False and strict.foreground_words(0)[8] is True  # good 1.9, terrible 2.1
    assert loose.foreground_words(2) == [False, True, False, True, False]  # top 0.8 now counts
    assert loose.foreground_words(3) == [False, False, False, True]  # fine 0.8


def test_a_foreground_word_in_several_pieces(root, tmp_path):
    """A tokenizer that never saw "terrible" spells it in pieces: all of them
    carry its word index and the mask."""
    tokenizer = train_wordpiece([["the", "film", "a", "good", "it", "is"]] * 5 + [["terrible"]], vocab_size=40)
    save_tokenizer(tokenizer, tmp_path / "tok")
    data = SST2(root, "train", tokenizer=tokenizer, max_tokens=40)
    assert data.tokenizer is tokenizer
    tokens, mask = data[4].image, data[4].mask  # "terrible"
    n = len(tokenizer.encode(["terrible"], is_pretokenized=True, add_special_tokens=False).ids)
    assert n > 1
    assert tokens[1, :n + 2].tolist() == [-1] + [0] * n + [-1]
    assert mask.tolist() == [False] + [True] * n + [False] * (40 - n - 1)
    assert torch.equal(tokens, encode_words(tokenizer, data.words(4), 40)[0])


def test_truncation_drops_whole_words(root):
    data = SST2(root, "train", max_tokens=8)
    assert int(data.kept[0]) < 11 and data.words(0) == data.words(0)[:int(data.kept[0])]
    words = data.words(0)
    assert len(data.foreground_words(0)) == len(words)
    assert int(data[0].image[1].max()) == len(words) - 1  # the last kept word is whole, nothing after it


def test_dev_shares_the_train_tokenizer(root):
    train, dev = SST2(root, "train"), SST2(root, "dev")
    assert dev.tokenizer.to_str() == train.tokenizer.to_str()
    assert dev.labels.tolist() == [1, 0] and dev.foreground_words(1) == [True, False, True]
    assert SST2(root, "train", vocab_size=40).tokenizer.to_str() != train.tokenizer.to_str()


def test_bad_files_and_arguments(root, tmp_path):
    with pytest.raises(UsageError, match="split = 'test': GLUE's SST-2 test.tsv has no labels"):
        SST2(root, "test")
    with pytest.raises(UsageError, match="split = 'validation'"):
        SST2(root, "validation")
    with pytest.raises(UsageError, match="lexicon_threshold = -1"):
        SST2(root, lexicon_threshold=-1)
    with pytest.raises(MissingFileError, match="nowhere' does not exist"):
        SST2(tmp_path / "nowhere")
    (root / "dev.tsv").unlink()
    with pytest.raises(MissingFileError, match="dev.tsv' does not exist"):
        SST2(root, "dev")
    cases = [
        ("index\tsentence\n0\tgood\n", "line 1: header 'index\\\\tsentence' has no 'label' column"),
        ("sentence\tlabel\ngood film\t1\na bad one\t2\n", "line 3: label '2'; expected 0"),
        ("sentence\tlabel\ngood film\t1\n\nbad\n", "line 4: 1 tab-separated fields; expected 2"),
        ("sentence\tlabel\n \t1\n", "line 2: empty sentence"),
        ("sentence\tlabel\n\n", "holds no sentence"),
        ("", "line 1: header '' has no 'sentence' column"),
    ]
    for text, message in cases:
        (root / "bad.tsv").write_text(text)
        with pytest.raises(DataError, match="bad.tsv'.*" + message):
            read_sst2(root / "bad.tsv")
    (root / "bad.tsv").write_bytes(b"sentence\tlabel\n\xff\t1\n")
    with pytest.raises(DataError, match="bad.tsv' cannot be read as UTF-8"):
        read_sst2(root / "bad.tsv")
    (root / "train.tsv").write_text("sentence\tlabel\ngood\tyes\n")
    with pytest.raises(DataError, match="train.tsv' line 2: label 'yes'"):
        SST2(root)


def test_columns_in_any_order_and_windows_line_ends(tmp_path):
    (tmp_path / "train.tsv").write_text("label\tsentence\r\n1\tgood film \r\n0\tboring\r\n")
    sentences, labels = read_sst2(tmp_path / "train.tsv")
    assert sentences == [["good", "film"], ["boring"]] and labels == [1, 0]
