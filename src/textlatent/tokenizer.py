"""The PaliGemma SentencePiece tokenizer with openpi's π0 prompt format."""

from __future__ import annotations

import logging
import os
import pathlib

import numpy as np
import sentencepiece

from textlatent.checkpoint.download import resolve

logger = logging.getLogger(__name__)

PALIGEMMA_TOKENIZER_URL = "gs://big_vision/paligemma_tokenizer.model"
BOS_ID = 2


def clean_prompt(prompt: str) -> str:
    """openpi's cleaning: strip, underscores and newlines to spaces (no lower-casing)."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


class PaligemmaTokenizer:
    """``tokenize(prompt) -> (ids int[max_len], mask bool[max_len])`` as openpi's ``PaligemmaTokenizer`` for π0:
    BOS + pieces of the cleaned prompt + pieces of ``"\\n"``, padded with 0 (mask False) or truncated to ``max_len``."""

    def __init__(self, model: str | os.PathLike | None = None, *, max_len: int = 48):
        """``model``: a SentencePiece ``.model`` file as a local path, ``gs://…`` or ``hf://…`` (default: PaliGemma's,
        downloaded once)."""
        if max_len < 2:
            raise ValueError(f"max_len must be at least 2 (BOS and '\\n'), got {max_len}")
        path = resolve(model if model is not None else PALIGEMMA_TOKENIZER_URL)
        if pathlib.Path(path).is_dir():
            raise ValueError(f"tokenizer {model} is a directory; pass the SentencePiece .model file")
        self.path = pathlib.Path(path)
        self.max_len = max_len
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.path.read_bytes())
        except RuntimeError as e:
            raise ValueError(f"{self.path} is not a SentencePiece model: {e}") from e

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, prompt: str) -> list[int]:
        """Unpadded ids: BOS, the cleaned prompt, then the separately tokenized ``"\\n"`` (start of answer)."""
        return self._sp.encode(clean_prompt(prompt), add_bos=True) + self._sp.encode("\n")

    def tokenize(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.encode(prompt)
        n = len(tokens)
        if n < self.max_len:
            mask = [True] * n + [False] * (self.max_len - n)
            tokens = tokens + [0] * (self.max_len - n)
        else:
            if n > self.max_len:
                logger.warning(
                    "Prompt has %d tokens, more than max_token_len=%d; truncating (the final '\\n' is dropped). "
                    "Raise max_token_len in the model config if this is frequent.",
                    n,
                    self.max_len,
                )
            tokens = tokens[: self.max_len]
            mask = [True] * self.max_len
        return np.asarray(tokens, dtype=np.int32), np.asarray(mask, dtype=bool)

    def decode(self, ids) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))
