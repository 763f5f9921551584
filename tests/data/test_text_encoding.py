"""Words into BERT inputs: the WordPiece tokenizer (trained here on a tiny
corpus, saved and loaded back) and the (2, max_tokens) layout, word indices
included."""

import pytest
import torch

from kdlens.data.text_encoding import (
    NOT_A_WORD,
    SPECIAL_TOKENS,
    encode_sentences,
    encode_words,
    load_tokenizer,
    pad_id,
    save_tokenizer,
    special_ids,
    train_wordpiece,
    word_mask,
)
from kdlens.errors import DataError, MissingFileError, UsageError

COMMON = "the a film is very good bad and of it was not".split()
# frequent words become whole tokens; "kaleidoscope" appears once, so a small
# vocabulary leaves it in several pieces
CORPUS = [COMMON[i:] + COMMON[:i] for i in range(len(COMMON))] * 20 + [["kaleidoscope", "Film"]]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(CORPUS, vocab_size=70)


def pieces(tokenizer, word):
    return tokenizer.encode([word], is_pretokenized=True, add_special_tokens=False).tokens


def test_special_tokens_come_first(tokenizer):
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert pad_id(tokenizer) == 0 and special_ids(tokenizer) == (0, 1, 2, 3)
    assert pieces(tokenizer, "good") == ["good"] and pieces(tokenizer, "GOOD") == ["good"]  # lower-cased
    assert len(pieces(tokenizer, "kaleidoscope")) > 2
    # a tokenizer used directly adds [CLS] ... [SEP] too, as a Hugging Face BERT does
    assert tokenizer.encode(["good"], is_pretokenized=True).tokens == ["[CLS]", "good", "[SEP]"]


def test_training_is_deterministic():
    """tokenizers' own trainer numbers the "##" pieces in hash-map order, so
    two runs in one process already disagreed before train_wordpiece fixed it."""
    first, second = train_wordpiece(CORPUS, 70), train_wordpiece(iter(CORPUS), 70)
    assert first.get_vocab() == second.get_vocab() and first.to_str() == second.to_str()
    assert train_wordpiece(CORPUS, 60).get_vocab() != first.get_vocab()


def test_a_word_in_several_pieces_keeps_one_word_index(tokenizer):
    words = ["the", "Kaleidoscope", "was", "good"]
    split = pieces(tokenizer, "kaleidoscope")
    encoded, kept = encode_words(tokenizer, words, max_tokens=16)
    assert encoded.shape == (2, 16) and encoded.dtype == torch.long and kept == 4
    ids, word_index = encoded.tolist()
    n = len(split)
    assert word_index == [-1, 0] + [1] * n + [2, 3, -1] + [-1] * (16 - 5 - n)
    assert ids[0] == 2 and ids[4 + n] == 3 and ids[5 + n:] == [0] * (16 - 5 - n)  # [CLS] ... [SEP] [PAD]...
    assert [tokenizer.id_to_token(i) for i in ids[2:2 + n]] == split
    # the foreground mask covers every piece of a foreground word, never a special token or pad
    mask = word_mask(encoded, [False, True, False, True])
    assert mask.tolist() == [False, False] + [True] * n + [False, True] + [False] * (16 - 4 - n)


def test_punctuation_inside_a_word_and_unknown_words(tokenizer):
    """BertPreTokenizer still cuts "it's" at the apostrophe, but all its pieces
    stay word 0; a word of unknown characters, or one that normalises to
    nothing, is one [UNK] and still a word."""
    encoded, kept = encode_words(tokenizer, ["it's", "ωψ", "", "good"], max_tokens=12)
    ids, word_index = encoded.tolist()
    first = len(pieces(tokenizer, "it's"))
    assert first >= 3 and kept == 4
    assert word_index[:first + 5] == [-1] + [0] * first + [1, 2, 3, -1]
    assert ids[1 + first:3 + first] == [1, 1]  # [UNK], [UNK]


def test_truncation_drops_whole_words_from_the_end(tokenizer):
    words = ["good", "film", "kaleidoscope", "it"]
    n = len(pieces(tokenizer, "kaleidoscope"))
    full, kept = encode_words(tokenizer, words, max_tokens=4 + n + 1 + 1)
    assert kept == 4
    # room for "good film" and part of "kaleidoscope": it goes, and "it" after it, though "it" would fit
    cut, kept = encode_words(tokenizer, words, max_tokens=4 + n - 1)
    assert kept == 2
    assert cut[1].tolist() == [-1, 0, 1, -1] + [-1] * (n - 1)
    assert cut[0, :3].tolist() == full[0, :3].tolist() and cut[0, 3] == 3 and (cut[0, 4:] == 0).all()
    assert encode_words(tokenizer, ["kaleidoscope"], max_tokens=3)[1] == 0  # nothing fits: [CLS] [SEP] [PAD]
    empty, kept = encode_words(tokenizer, [], max_tokens=3)
    assert kept == 0 and empty.tolist() == [[2, 3, 0], [-1, -1, -1]]


def test_encode_sentences_matches_encode_words(tokenizer):
    """encode_sentences tokenizes each distinct word once; the result is the
    sentence-by-sentence encoding, odd words included."""
    sentences = [["good", "film"], ["kaleidoscope", "was", "bad", "it"], [],
                 ["it's", "", "ωψ", "Good", "a b"], ["the"] * 9]
    foreground = [[True, False], [True, False, True, False], [], [True, False, True, False, True], [False] * 9]
    encoded = encode_sentences(tokenizer, sentences, foreground, max_tokens=8)
    for s, words in enumerate(sentences):
        single, kept = encode_words(tokenizer, words, 8)
        assert torch.equal(encoded.tokens[s], single) and encoded.kept[s] == kept
        assert torch.equal(encoded.masks[s], word_mask(single, foreground[s]))
    n = len(pieces(tokenizer, "kaleidoscope"))
    assert encoded.kept.tolist() == [2, 1, 0, 4, 6] and encoded.masks[1].tolist() == [False] + [True] * n + [False] * (7 - n)


def test_save_and_load_round_trip(tokenizer, tmp_path):
    path = save_tokenizer(tokenizer, tmp_path / "tok")
    assert path.name == "tokenizer.json"
    loaded = load_tokenizer(tmp_path / "tok")
    words = ["The", "kaleidoscope", "was", "GOOD", "ωψ"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert torch.equal(encode_words(loaded, words, 16)[0], encode_words(tokenizer, words, 16)[0])


def test_load_a_bert_vocab_txt(tokenizer, tmp_path):
    """A pretrained BERT directory may hold only vocab.txt: read as lower-casing
    WordPiece, it encodes as Hugging Face's BertTokenizerFast does."""
    BertTokenizerFast = pytest.importorskip("transformers").BertTokenizerFast

    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (tmp_path / "vocab.txt").write_text("".join(token + "\n" for token, _ in vocab))
    loaded = load_tokenizer(tmp_path)
    words = ["The", "Kaleidoscope", "was", "good", "it's", "ωψ"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert torch.equal(encode_words(loaded, words, 20)[0], encode_words(tokenizer, words, 20)[0])
    reference = BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=True, local_files_only=True)
    ids = reference(words, is_split_into_words=True)["input_ids"]
    assert encode_words(loaded, words, 20)[0][0, :len(ids)].tolist() == ids


def test_load_errors_name_the_directory_or_file(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere.*tokenizer.json.*vocab.txt"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="empty' holds neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="bad/tokenizer.json' cannot be read as a tokenizer"):
        load_tokenizer(tmp_path / "bad")
    (tmp_path / "nopad").mkdir()
    (tmp_path / "nopad" / "vocab.txt").write_text("[UNK]\n[CLS]\n[SEP]\ngood\n")
    with pytest.raises(DataError, match=r"nopad/vocab.txt': tokenizer has no \[PAD\] token"):
        load_tokenizer(tmp_path / "nopad")


def test_bad_arguments(tokenizer):
    with pytest.raises(UsageError, match="max_tokens = 2"):
        encode_words(tokenizer, ["good"], max_tokens=2)
    with pytest.raises(UsageError, match="words is 'good film'"):
        encode_words(tokenizer, "good film", max_tokens=8)
    with pytest.raises(UsageError, match="vocab_size = 3"):
        train_wordpiece(CORPUS, vocab_size=3)
    with pytest.raises(UsageError, match="corpus is empty"):
        train_wordpiece([], vocab_size=50)
    with pytest.raises(UsageError, match="corpus sentence 0"):
        train_wordpiece(["a sentence as one string"], vocab_size=50)
    with pytest.raises(UsageError, match="foreground of sentence 0 has 1 flags for 2 words"):
        encode_sentences(tokenizer, [["good", "film"]], [[True]], max_tokens=8)
    truncating = train_wordpiece(CORPUS, 80)
    truncating.enable_truncation(max_length=4)
    with pytest.raises(UsageError, match="tokenizer truncates to 4 tokens"):
        encode_words(truncating, ["good"], max_tokens=8)
    bare = train_wordpiece(CORPUS, 80)
    assert NOT_A_WORD == -1 and bare.token_to_id("[PAD]") == 0
