"""`PanGuTokenizer`: the PanGu-alpha tokenizer as a PaddleNLP `PretrainedTokenizer`."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from paddlenlp.transformers import PretrainedTokenizer

from . import core
from .batch import DEFAULT_CHUNK_SIZE, batch_encode_ids
from .core import PanGuSentencePiece
from .vocab import VOCAB_MODEL_NAME, VOCAB_TEXT_NAME, VocabNotFoundError, companion_vocab_text, find_vocab_file


class PanGuTokenizer(PretrainedTokenizer):
    """PanGu-alpha tokenizer: jieba segmentation + the 40k `bpe_4w_pcl` SentencePiece model.

    Ids are exactly those of the reference JIEBATokenizer (REF "Tokenizer"); `tokenizer(text)`,
    `encode`, `tokenize` + `convert_tokens_to_ids` and `decode` give the same results as the
    fast paths `encode_ids` / `decode_ids` / `batch_encode_ids`, because this class replaces
    the PaddleNLP base behaviours that would change them:

    * special/added tokens are NOT recognised inside text (the reference never did): the text
      "<eot>" encodes as ordinary characters; append separators as ids (`eod_id`);
    * no whitespace stripping around special tokens, no `clean_up_tokenization` on decode;
    * `add_special_tokens=True` adds nothing (PanGu prompts carry no BOS/EOS).

    Normalisation: the SentencePiece model applies NFKC, so `decode(encode(x))` equals
    `unicodedata.normalize("NFKC", x)` for in-vocabulary text whose only whitespace is " " and
    "\\n": full-width ASCII (Ａ１，！？) decodes half-width, "…" as "..."; tab, "\\r", U+3000 and
    U+00A0 are dropped; out-of-vocabulary characters (most emoji) become id 0 and decode to
    "\u2047". See `core.PanGuSentencePiece`.

    Ids (REF): unk 0, <s> 1, </s> 2, newline 3, space 4, <sep> 5, <pad> 6, <mask> 7, <eod> 8,
    <eot> 9. Documents in the released training data end with 9 (<eot>); `eod_id` is that
    document separator (configurable with `eod_token_id=`) and also the generation stop id.

    Args:
        vocab_file: `vocab.model` path or a directory holding one; None finds the file shipped
            in the installed `pcl-pangu` package (without importing pcl_pangu).
        eod_token_id: document separator / end-of-text id used for training data (default 9).
    """

    resource_files_names = {"vocab_file": VOCAB_MODEL_NAME}
    pretrained_resource_files_map = {"vocab_file": {}}
    pretrained_init_configuration = {}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"

    def __init__(
        self,
        vocab_file=None,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="<eot>",
        pad_token="<pad>",
        sep_token="<sep>",
        mask_token="<mask>",
        eod_token_id: int = core.DEFAULT_DOCUMENT_SEPARATOR_ID,
        **kwargs,
    ):
        codec = PanGuSentencePiece(vocab_file)
        super().__init__(
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            sep_token=sep_token,
            mask_token=mask_token,
            **kwargs,
        )
        self._codec = codec
        self.vocab_file = str(codec.vocab_file)
        self.init_kwargs["vocab_file"] = self.vocab_file
        if not 0 <= int(eod_token_id) < codec.vocab_size:
            raise ValueError(f"eod_token_id must be in [0, {codec.vocab_size}), got {eod_token_id}")
        self._eod_id = int(eod_token_id)

    # ----- construction -------------------------------------------------------------------
    @classmethod
    def from_default(cls, **kwargs) -> "PanGuTokenizer":
        """The tokenizer built on the `vocab.model` of the installed `pcl-pangu` package."""
        return cls(vocab_file=None, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "PanGuTokenizer":
        """Load from a local directory written by `save_pretrained` (or holding a `vocab.model`).

        Never downloads: a name that is not an existing directory or `vocab.model` file raises
        `VocabNotFoundError`.
        """
        path = Path(str(pretrained_model_name_or_path)).expanduser()
        if path.is_file():
            return cls(str(path), *args, **kwargs)
        if not (path / VOCAB_MODEL_NAME).is_file():
            raise VocabNotFoundError(
                [str(path / VOCAB_MODEL_NAME)],
                reason=f"{str(pretrained_model_name_or_path)!r} is not a directory holding a PanGu {VOCAB_MODEL_NAME} "
                "(this project never downloads tokenizers)",
            )
        return super().from_pretrained(str(path), *args, **kwargs)

    def save_resources(self, save_directory):
        """Copy `vocab.model` (and `vocab.vocab` when present) into `save_directory`."""
        pairs = [(Path(self.vocab_file), VOCAB_MODEL_NAME), (companion_vocab_text(self.vocab_file), VOCAB_TEXT_NAME)]
        for src, name in pairs:
            dst = Path(save_directory) / name
            if src is not None and src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)

    # ----- fast paths -----------------------------------------------------------------------
    def encode_ids(self, text: str | bytes) -> list[int]:
        """Token ids of one text, no separator appended (REF algorithm)."""
        return self._codec.encode_ids(text)

    def decode_ids(self, ids: Iterable[int]) -> str:
        """Text of token ids (REF algorithm; special ids decode to their piece text)."""
        return self._codec.decode_ids(ids)

    def batch_encode_ids(
        self,
        texts: Sequence[str | bytes],
        num_workers: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **kwargs,
    ) -> list[list[int]]:
        """Encode many documents in order; multi-process for large inputs (see `batch.batch_encode_ids`)."""
        return batch_encode_ids(texts, num_workers=num_workers, chunk_size=chunk_size, codec=self._codec, **kwargs)

    # ----- ids of special pieces (REF "Tokenizer") -------------------------------------------
    @property
    def eod_id(self) -> int:
        """Document separator appended after every training document (default 9, <eot>)."""
        return self._eod_id

    @property
    def eot_id(self) -> int:
        return core.EOT_ID

    @property
    def pad_id(self) -> int:
        return core.PAD_ID

    @property
    def sep_id(self) -> int:
        return core.SEP_ID

    @property
    def mask_id(self) -> int:
        return core.MASK_ID

    @property
    def unk_id(self) -> int:
        return core.UNK_ID

    @property
    def newline_id(self) -> int:
        return core.NEWLINE_ID

    @property
    def space_id(self) -> int:
        return core.SPACE_ID

    # ----- PretrainedTokenizer interface ---------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._codec.vocab_size

    def get_vocab(self) -> dict[str, int]:
        vocab = {self._codec.sp.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def tokenize(self, text, **kwargs) -> list[str]:
        """Pieces of `text`, one per id of `encode_ids` (no special-token splitting, see class doc)."""
        return self._codec.encode_pieces(text)

    def _tokenize(self, text, **kwargs) -> list[str]:
        return self._codec.encode_pieces(text)

    def _convert_token_to_id(self, token: str) -> int:
        return self._codec.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self._codec.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._codec.decode_ids(self._codec.piece_to_id(t) for t in tokens)

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        """REF decode; `clean_up_tokenization_spaces` and `spaces_between_special_tokens` are ignored."""
        ids = [int(i) for i in (token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids)]
        if skip_special_tokens:
            special = set(self.all_special_ids)
            ids = [i for i in ids if i not in special]
        parts, run = [], []
        for i in ids:
            if i >= self.vocab_size and i in self.added_tokens_decoder:
                parts += [self._codec.decode_ids(run), str(self.added_tokens_decoder[i])]
                run = []
            else:
                run.append(i)
        return "".join(parts) + self._codec.decode_ids(run)

    def save_vocabulary(self, save_directory, filename_prefix=None) -> tuple[str, ...]:
        self.save_resources(save_directory)
        return (os.path.join(save_directory, VOCAB_MODEL_NAME),)


def load_tokenizer(path: str | os.PathLike | None = None, **kwargs) -> PanGuTokenizer:
    """A `PanGuTokenizer` from a saved directory, a `vocab.model` path, or (None) the default files."""
    if path is None:
        return PanGuTokenizer.from_default(**kwargs)
    find_vocab_file(path)  # raises VocabNotFoundError naming the path
    return PanGuTokenizer.from_pretrained(path, **kwargs)


def save_tokenizer_files(out_dir: str, source: str | os.PathLike | None = None, vocab_size: int | None = None) -> bool:
    """Write the tokenizer files (vocab.model, tokenizer_config.json, ...) into a model directory, so that
    `AutoTokenizer.from_pretrained(out_dir)` opens it: `source`'s tokenizer (a directory or vocab.model)
    if given, else pcl-pangu's default. Returns False, writing nothing, when the model's `vocab_size`
    is smaller than the tokenizer's (its ids would index past the embedding)."""
    tok = PanGuTokenizer.from_pretrained(source) if source else PanGuTokenizer.from_default()
    if vocab_size is not None and vocab_size < tok.vocab_size:
        return False
    tok.save_pretrained(str(out_dir))
    return True


def tokenizer_source(model_dir: str | os.PathLike) -> str | None:
    """`model_dir` if it holds a vocab.model (a directory this tokenizer can load), else None."""
    return str(model_dir) if os.path.isfile(os.path.join(model_dir, VOCAB_MODEL_NAME)) else None
