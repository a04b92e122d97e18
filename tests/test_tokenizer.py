import logging

import numpy as np
import pytest
import sentencepiece

from textlatent.tokenizer import PaligemmaTokenizer, clean_prompt


@pytest.fixture(scope="module")
def sp(tokenizer_path):
    return sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_path))


def test_format_is_bos_prompt_newline_then_padding(tokenizer_path, sp):
    tok = PaligemmaTokenizer(tokenizer_path, max_len=20)
    ids, mask = tok.tokenize("  put_the bowl\non the plate ")
    body = sp.encode("put the bowl on the plate")
    newline = sp.encode("\n")
    assert len(newline) == 1
    n = 1 + len(body) + 1
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == (20,)
    assert ids[0] == 2 and list(ids[1 : n - 1]) == body and ids[n - 1] == newline[0]
    assert mask[:n].all() and not mask[n:].any() and (ids[n:] == 0).all()


def test_cleaning_keeps_case():
    assert clean_prompt("  Put_the\nBowl ") == "Put the Bowl"


def test_truncation_warns_and_drops_newline(tokenizer_path, caplog):
    tok = PaligemmaTokenizer(tokenizer_path, max_len=5)
    with caplog.at_level(logging.WARNING):
        ids, mask = tok.tokenize("pick up the black bowl next to the cookie box and place it on the plate")
    assert mask.all() and ids.shape == (5,) and ids[0] == 2
    assert ids[-1] != tok.encode("x")[-1]  # the "\n" was cut off
    assert "truncating" in caplog.text


def test_bad_tokenizer_files(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        PaligemmaTokenizer(bad)
    with pytest.raises(ValueError, match="directory"):
        PaligemmaTokenizer(tmp_path)
    with pytest.raises(FileNotFoundError):
        PaligemmaTokenizer(tmp_path / "missing.model")
