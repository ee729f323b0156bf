import pytest

from gptlab.tokenizer.char import CharTokenizer


def test_round_trip_and_save_load(tmp_path, text):
    tok = CharTokenizer.train(text)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) == tok.vocab_size - 1 and min(ids) == 0
    tok.save(tmp_path)
    again = CharTokenizer.load(tmp_path)
    assert again.chars == tok.chars and again.encode(text) == ids


def test_vocab_is_sorted_set():
    assert CharTokenizer.train("banana").chars == ["a", "b", "n"]


def test_unknown_character_names_it():
    with pytest.raises(ValueError, match="'z' is not in"):
        CharTokenizer.train("abc").encode("abz")
