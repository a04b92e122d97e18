"""Train a small SentencePiece model with PaliGemma's special ids, for offline demos and tests."""

from __future__ import annotations

import io
import pathlib

import sentencepiece

DEMO_SENTENCES = [
    "put the bowl on the plate",
    "put the wine bottle on the rack",
    "open the top drawer and put the bowl inside",
    "put the cream cheese in the bowl",
    "put the wine bottle on top of the cabinet",
    "push the plate to the front of the stove",
    "turn on the stove",
    "put the bowl on the stove",
    "put the bowl on top of the cabinet",
    "open the middle drawer of the cabinet",
    "pick up the alphabet soup and place it in the basket",
    "pick up the black bowl next to the cookie box and place it on the plate",
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "put the orange juice on the stove",
    "put the bbq source on the plate",
    "pick up the ketchup, the milk, the butter and the tomato sauce",
]


def train_tokenizer(
    path: str | pathlib.Path, sentences: list[str] | None = None, *, vocab_size: int = 200
) -> pathlib.Path:
    """Write a SentencePiece model whose special ids are PaliGemma's (pad 0, eos 1, bos 2, unk 3) and in which
    ``"\\n"`` is a single piece, like the real tokenizer."""
    lines = list(sentences or DEMO_SENTENCES)
    corpus = "\n".join(lines * 4) + "\n"
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,  # as in Gemma's tokenizer, a lone newline is one piece
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path
