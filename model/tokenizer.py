"""Text tokenizer for the trainer: a Hugging Face ``tokenizers`` tokenizer.json plus Flamingo's tokens.

Flamingo adds two tokens to the language model's vocabulary: ``<image>`` (where an image sits in
the text) and ``<|endofchunk|>`` (closes the text that belongs to one image). A pad token is added
when the tokenizer has none. ``train_bpe`` learns a byte-level BPE on our own corpus for users
without a tokenizer; ``byte_tokenizer`` is the no-training fallback (256 byte tokens + specials).
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

IMAGE_TOKEN = "<image>"
EOC_TOKEN = "<|endofchunk|>"
PAD_TOKEN = "<pad>"
EOT_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, EOT_TOKEN, IMAGE_TOKEN, EOC_TOKEN]
# Pad tokens other tokenizers use; reused instead of adding ours.
_KNOWN_PADS = ["<pad>", "[PAD]", "<|pad|>", "<|padding|>"]


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` with the ids of Flamingo's special tokens resolved once."""

    def __init__(self, tok: Tokenizer):
        missing = [t for t in (IMAGE_TOKEN, EOC_TOKEN) if tok.token_to_id(t) is None]
        if missing:
            tok.add_special_tokens(missing)
        pad = next((p for p in _KNOWN_PADS if tok.token_to_id(p) is not None), None)
        if pad is None:
            tok.add_special_tokens([PAD_TOKEN])
            pad = PAD_TOKEN
        self.tok = tok
        self.image_id: int = tok.token_to_id(IMAGE_TOKEN)
        self.eoc_id: int = tok.token_to_id(EOC_TOKEN)
        self.pad_id: int = tok.token_to_id(pad)
        self.eot_id: int | None = tok.token_to_id(EOT_TOKEN)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings inside it are NOT turned into special ids."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    def to_str(self) -> str:
        return self.tok.to_str()


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load a tokenizer.json from a local path (never from a hub)."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {p} (pass a tokenizer.json path)")
    return TextTokenizer(Tokenizer.from_file(str(p)))


def _byte_level(tok: Tokenizer) -> Tokenizer:
    # add_prefix_space=False: the leading-space augmentation decides about the space, not the tokenizer.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def byte_tokenizer() -> TextTokenizer:
    """Byte-level tokenizer with no merges: every UTF-8 byte is a token (vocabulary 256 + specials)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = _byte_level(Tokenizer(models.BPE(vocab=vocab, merges=[])))
    tok.add_special_tokens(SPECIAL_TOKENS)
    return TextTokenizer(tok)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """Learn a byte-level BPE of ``vocab_size`` tokens (specials included) from ``texts``."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet (256) + {len(SPECIAL_TOKENS)} specials")
    tok = _byte_level(Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)


def tokenizer_summary(tok: TextTokenizer) -> str:
    return json.dumps(
        {"vocab_size": tok.vocab_size, "image_id": tok.image_id, "eoc_id": tok.eoc_id, "pad_id": tok.pad_id}
    )
