"""PanGu-alpha tokenizer: jieba + SentencePiece (REF "Tokenizer").

`PanGuTokenizer` (PaddleNLP `PretrainedTokenizer`) is imported lazily so that the fast paths
(`PanGuSentencePiece`, `batch_encode_ids`) and worker processes never import paddlenlp.
"""
from .batch import ParallelEncoder, batch_encode_ids
from .core import (
    DEFAULT_DOCUMENT_SEPARATOR_ID,
    EOT_ID,
    PAD_ID,
    SPECIAL_PIECES,
    PanGuSentencePiece,
    TokenizerInputError,
    ensure_text,
)
from .vocab import VocabNotFoundError, default_vocab_candidates, find_vocab_file

__all__ = [
    "PanGuTokenizer",
    "load_tokenizer",
    "save_tokenizer_files",
    "tokenizer_source",
    "PanGuSentencePiece",
    "ParallelEncoder",
    "batch_encode_ids",
    "SPECIAL_PIECES",
    "DEFAULT_DOCUMENT_SEPARATOR_ID",
    "EOT_ID",
    "PAD_ID",
    "TokenizerInputError",
    "VocabNotFoundError",
    "default_vocab_candidates",
    "ensure_text",
    "find_vocab_file",
]


def __getattr__(name):
    if name in ("PanGuTokenizer", "load_tokenizer", "save_tokenizer_files", "tokenizer_source"):
        from . import tokenization

        return getattr(tokenization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
