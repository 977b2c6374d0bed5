"""The PanGu-alpha tokenizer algorithm (jieba + SentencePiece), with no paddle/paddlenlp import.

This is the fast path used directly by `encode_ids` / `decode_ids`, by the worker
processes of `batch.py`, and wrapped by the PaddleNLP-compatible `PanGuTokenizer`.

Algorithm (REF "Tokenizer", identical to pcl_pangu's JIEBATokenizer):
    encode: segments = jieba.cut(text, cut_all=False); in every segment " " -> U+2582 and
            "\\n" -> U+2583; join the segments with " "; SentencePiece encode.
    decode: SentencePiece decode; delete every " "; U+2582 -> " "; U+2583 -> "\\n".
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from . import fastseg
from .vocab import find_vocab_file
from paddle_pangu.errors import PanGuError, UsageError

# REF "Tokenizer": ids 0..9 of bpe_4w_pcl/vocab.model.
SPECIAL_PIECES: dict[int, str] = {
    0: "<unk>",
    1: "<s>",
    2: "</s>",
    3: "\u2583",  # newline piece
    4: "\u2582",  # space piece
    5: "<sep>",
    6: "<pad>",
    7: "<mask>",
    8: "<eod>",
    9: "<eot>",
}
UNK_ID, BOS_ID, EOS_PIECE_ID, NEWLINE_ID, SPACE_ID = 0, 1, 2, 3, 4
SEP_ID, PAD_ID, MASK_ID, EOD_PIECE_ID, EOT_ID = 5, 6, 7, 8, 9
# REF "Tokenizer": the released training data appended 9 (<eot>) after every document.
DEFAULT_DOCUMENT_SEPARATOR_ID = EOT_ID

_SPACE_PIECE, _NEWLINE_PIECE = "\u2582", "\u2583"
_TRANSLATE = str.maketrans({" ": _SPACE_PIECE, "\n": _NEWLINE_PIECE})

_jieba_lock = threading.Lock()
_jieba_ready = False


class TokenizerInputError(PanGuError, ValueError):
    """Input that cannot be tokenized (e.g. bytes that are not UTF-8); names the source and byte offset."""


def init_jieba() -> None:
    """Silence jieba's logger and load its dictionary once per process."""
    global _jieba_ready
    if _jieba_ready:
        return
    with _jieba_lock:
        if _jieba_ready:
            return
        import jieba

        # jieba logs "Building prefix dict ..." at DEBUG to stderr on first use in every process.
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _jieba_ready = True


def ensure_text(text: str | bytes | bytearray, source: str = "<input>") -> str:
    """Return `text` as str; bytes must be UTF-8 (error names `source` and the byte offset), and a str must be
    encodable as UTF-8 (a lone surrogate, e.g. from a JSON "\\ud800" escape, is named with its line and
    character instead of surfacing as SentencePiece's RuntimeError)."""
    if isinstance(text, str):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            line = text.count("\n", 0, err.start) + 1
            raise TokenizerInputError(
                f"{source}: lone surrogate U+{ord(text[err.start]):04X} at character {err.start} (line {line}): not "
                "Unicode text, cannot be tokenized - fix the escape in the input (prepare-data skips such "
                "documents and counts them as `lone_surrogate`)"
            ) from None
        return text
    if isinstance(text, (bytes, bytearray, memoryview)):
        data = bytes(text)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = data[err.start : err.start + 4].hex(" ")
            line = data.count(b"\n", 0, err.start) + 1
            raise TokenizerInputError(
                f"{source}: not valid UTF-8 at byte offset {err.start} (line {line}; bytes {bad}: {err.reason}); "
                "PanGu tokenization needs UTF-8 text - re-encode the input, e.g. `iconv -f GBK -t UTF-8`."
            ) from None
    raise TypeError(f"{source}: expected str or UTF-8 bytes, got {type(text).__name__}")


def load_sentencepiece(vocab_file=None, check_special_ids: bool = True) -> tuple[Path, spm.SentencePieceProcessor]:
    """Find and load the SentencePiece model; optionally verify the PanGu special pieces at ids 0..9."""
    path = Path(find_vocab_file(vocab_file))
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(str(path))
    except (OSError, RuntimeError) as err:
        raise TokenizerInputError(f"{path}: not a loadable SentencePiece model ({err})") from None
    if check_special_ids:
        found = {i: sp.id_to_piece(i) for i in SPECIAL_PIECES if i < sp.get_piece_size()}
        if found != SPECIAL_PIECES:
            raise ValueError(
                f"{path}: not the PanGu-alpha vocabulary - expected special pieces "
                f"{SPECIAL_PIECES} at ids 0..9, found {found}"
            )
    return path, sp


class PanGuSentencePiece:
    """jieba + SentencePiece codec for PanGu-alpha (the REF "Tokenizer" algorithm, no paddle imports).

    Args:
        vocab_file: `vocab.model` path or a directory holding one; None searches the installed
            `pcl-pangu` package (see `vocab.find_vocab_file`).
        check_special_ids: verify that ids 0..9 are the PanGu special pieces (REF), so a wrong
            SentencePiece model fails loudly instead of producing silently shifted ids.

    Normalisation (measured on the real bpe_4w_pcl model, which uses SentencePiece's NFKC
    normaliser): `decode_ids(encode_ids(x)) == unicodedata.normalize("NFKC", x)` for text whose
    only whitespace is " " and "\\n" and whose characters are in the vocabulary. Full-width
    ASCII (Ａ１，！？（）) comes back half-width and "…" as "..."; other whitespace (tab, "\\r",
    U+3000, U+00A0) is dropped; characters outside the vocabulary (e.g. most emoji) become
    id 0 and decode to "\u2047". Literal "<eot>" etc. in text are ordinary characters, never ids.
    """

    def __init__(self, vocab_file: str | os.PathLike | None = None, check_special_ids: bool = True):
        self.vocab_file, self.sp = load_sentencepiece(vocab_file, check_special_ids)
        # build / load the compiled segmenter before any timing or forking; it restores its cached tables
        # without loading jieba's dictionary (fastseg: ~1 s per process), which python jieba needs otherwise
        if fastseg.load() is None:
            init_jieba()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def segment(self, text: str) -> str:
        """jieba segmentation joined by " ", with " "/"\\n" mapped to U+2582/U+2583 (REF).

        Computed by the exact compiled jieba (`fastseg`, identical output, ~15x faster); python jieba
        when the build is unavailable or `PANGU_JIEBA=python`.
        """
        return fastseg.segment(text)

    def encode_ids(self, text: str | bytes, source: str = "<input>") -> list[int]:
        """Token ids of one text (no separator appended)."""
        return self.sp.encode(self.segment(ensure_text(text, source)))

    def encode_many(self, texts: Sequence[str | bytes], source: str = "texts", start: int = 0) -> list[list[int]]:
        """Token ids of each text, as `encode_ids` one by one: segmented in turn, then one SentencePiece call
        for the batch (one thread: the caller's processes are the parallelism). Errors name `source[i]`."""
        segmented = [self.segment(ensure_text(t, f"{source}[{start + k}]")) for k, t in enumerate(texts)]
        return self.sp.encode(segmented, num_threads=1) if segmented else []

    def encode_pieces(self, text: str | bytes, source: str = "<input>") -> list[str]:
        """SentencePiece pieces of one text, one per id of `encode_ids`."""
        return [self.sp.id_to_piece(i) for i in self.encode_ids(text, source)]

    def check_ids(self, ids: Iterable[int]) -> list[int]:
        """`ids` as a list of Python ints, each in [0, vocab_size)."""
        out = [int(i) for i in ids]
        size = self.vocab_size
        for pos, i in enumerate(out):
            if not 0 <= i < size:
                raise UsageError(f"token id {i} at position {pos} is outside the vocabulary [0, {size})")
        return out

    def decode_ids(self, ids: Sequence[int] | Iterable[int]) -> str:
        """Text of a sequence of ids (REF decode: drop " ", then U+2582 -> " ", U+2583 -> "\\n").

        <s>/</s> (1, 2) are SentencePiece control symbols and decode to ""; the other special
        ids decode to their piece text ("<eot>", "<pad>", ...), as in the reference.
        """
        text = self.sp.decode(self.check_ids(ids))
        return text.replace(" ", "").replace(_SPACE_PIECE, " ").replace(_NEWLINE_PIECE, "\n")

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(self.check_ids([i])[0])

    def piece_to_id(self, piece: str) -> int:
        """Id of a vocabulary piece; unknown pieces map to 0 (<unk>)."""
        return self.sp.piece_to_id(piece)
