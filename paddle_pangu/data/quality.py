"""Stage 3: model-based quality filtering (REF "Data pipeline": spam/quality classifiers + thresholds).

Two scorers, usable together or alone:

* `PerplexityScorer` - a causal LM (a PanGu model directory from this
  project, or a model object) scores each document by
  perplexity = exp(mean token NLL) over its first `max_tokens` tokens.
  Lower is more fluent; keep when <= `max_perplexity`.
* `TextClassifier` - char 1-3-gram hashing features + logistic regression
  (scikit-learn) trained from user-provided good/bad examples; the score is
  P(good); keep when >= `min_quality`.

Scores are written for every scored document (`scores.jsonl`, keyed by the
sha1 of the cleaned text), and a later run can reuse them (`ScoreCache`) to
try other thresholds without rescoring.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .stats import Document, StageStats

CLASSIFIER_FORMAT = "paddle_pangu.text_classifier/v1"


def text_sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def load_causal_lm(directory: str | os.PathLike):
    """A model directory: PanGu (this project) by its config's model_type, else PaddleNLP's AutoModelForCausalLM."""
    d = Path(directory)
    config_path = d / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"perplexity model {str(directory)!r}: no config.json (expected a saved model directory)")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    from ..config import PanGuConfig
    from ..io.safe_load import safe_paddle_load

    with safe_paddle_load():  # no pickle beyond arrays unless trusted, whichever class loads the weights
        if model_type == PanGuConfig.model_type:
            from ..model import PanGuForCausalLM

            return PanGuForCausalLM.from_pretrained(str(d))
        from paddlenlp.transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(d))


class PerplexityScorer:
    """exp(mean NLL) of documents under a causal LM; batched, right-padded.

    Args:
        model: a PanGuForCausalLM (or any model whose forward(input_ids)
            returns logits [B, S, V] first), or a model directory (a PanGu
            checkpoint of this project, or any PaddleNLP causal LM over the
            PanGu vocabulary).
        tokenizer: object with `encode_ids(text) -> list[int]`; default: the
            PanGu jieba + SentencePiece codec.
        max_tokens: score at most this many tokens per document.
        batch_size: documents per forward pass.
    """

    def __init__(self, model, tokenizer=None, max_tokens: int = 256, batch_size: int = 8, pad_id: int = 6):
        if isinstance(model, (str, os.PathLike)):
            model = load_causal_lm(model)
        self.model = model
        self.model.eval()
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", max_tokens + 1)
        self.max_tokens = min(max_tokens, limit + 1)
        self.batch_size, self.pad_id = batch_size, pad_id
        if tokenizer is None:
            from ..tokenizer import PanGuSentencePiece

            tokenizer = PanGuSentencePiece()
            vocab = getattr(getattr(model, "config", None), "vocab_size", tokenizer.vocab_size)
            if vocab < tokenizer.vocab_size:
                raise ValueError(f"perplexity model: vocab_size {vocab} < the PanGu tokenizer's "
                                 f"{tokenizer.vocab_size}; pass a matching tokenizer")
        self.tokenizer = tokenizer

    def _batch_nll(self, batch: list[list[int]]) -> list[float]:
        from ..model.losses import token_losses  # the one per-token NLL primitive

        return [float(losses.mean()) for losses in token_losses(self.model, batch, self.pad_id)]

    def score(self, texts: Sequence[str]) -> list[float]:
        """Perplexity per text (inf for texts with fewer than 2 tokens)."""
        encoded = [self.tokenizer.encode_ids(t)[: self.max_tokens] for t in texts]
        scores = [math.inf] * len(texts)
        usable = [i for i, ids in enumerate(encoded) if len(ids) >= 2]
        usable.sort(key=lambda i: len(encoded[i]))  # similar lengths per batch: less padding
        for start in range(0, len(usable), self.batch_size):
            idx = usable[start:start + self.batch_size]
            for i, nll in zip(idx, self._batch_nll([encoded[i] for i in idx])):
                scores[i] = float(math.exp(min(nll, 700.0)))
        return scores


class TextClassifier:
    """Good-vs-bad text classifier: char n-gram hashing + logistic regression."""

    def __init__(self, n_features: int = 2 ** 18, ngram_range: tuple[int, int] = (1, 3), C: float = 4.0):
        self.n_features, self.ngram_range, self.C = int(n_features), tuple(ngram_range), float(C)
        self.coef: np.ndarray | None = None
        self.intercept = 0.0

    def _vectorizer(self):
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(analyzer="char", ngram_range=self.ngram_range, n_features=self.n_features,
                                 alternate_sign=False, norm="l2")

    def fit(self, good: Sequence[str], bad: Sequence[str], seed: int = 0) -> "TextClassifier":
        from sklearn.linear_model import LogisticRegression

        if not good or not bad:
            raise ValueError(f"TextClassifier.fit: need good and bad examples, got {len(good)} good / {len(bad)} bad")
        x = self._vectorizer().transform(list(good) + list(bad))  # [N, F] sparse
        y = np.concatenate([np.ones(len(good)), np.zeros(len(bad))])
        lr = LogisticRegression(C=self.C, solver="liblinear", max_iter=2000, random_state=seed, class_weight="balanced")
        lr.fit(x, y)
        self.coef, self.intercept = lr.coef_[0].astype(np.float32), float(lr.intercept_[0])
        return self

    def score(self, texts: Sequence[str]) -> list[float]:
        """P(good) per text."""
        if self.coef is None:
            raise RuntimeError("TextClassifier: call fit() or load() first")
        z = self._vectorizer().transform(list(texts)) @ self.coef + self.intercept  # [N]
        return list(1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64))))

    def save(self, path: str | os.PathLike) -> None:
        """`<path>.json` (settings) + `<path>.npy` (weights); no pickle."""
        p = Path(path)
        meta = {"format": CLASSIFIER_FORMAT, "n_features": self.n_features, "ngram_range": list(self.ngram_range),
                "C": self.C, "intercept": self.intercept}
        p.with_suffix(".json").write_text(json.dumps(meta), encoding="utf-8")
        np.save(p.with_suffix(".npy"), self.coef)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextClassifier":
        p = Path(path)
        meta_path = p.with_suffix(".json")
        if not meta_path.is_file():
            raise FileNotFoundError(f"classifier {str(path)!r}: missing {meta_path.name}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {CLASSIFIER_FORMAT!r}")
        clf = cls(meta["n_features"], tuple(meta["ngram_range"]), meta["C"])
        clf.coef, clf.intercept = np.load(p.with_suffix(".npy")), float(meta["intercept"])
        if clf.coef.shape != (clf.n_features,):
            raise ValueError(f"{p.with_suffix('.npy')}: weights shape {clf.coef.shape}, expected ({clf.n_features},)")
        return clf


def read_examples(path: str | os.PathLike) -> list[str]:
    """Training examples: one per line of a text file, or the "text" field of a JSONL file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"classifier examples {str(path)!r}: no such file")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if p.suffix in (".jsonl", ".json"):
        lines = [json.loads(ln).get("text", "") for ln in lines]
    return [ln for ln in lines if ln]


class ScoreCache:
    """Scores from an earlier run's scores.jsonl, looked up by text sha1."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.scores: dict[str, dict] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"--scores-from {str(path)!r}: no such file")
            for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    rec = json.loads(line)
                    self.scores[rec["sha1"]] = rec
                except (json.JSONDecodeError, KeyError) as exc:
                    raise ValueError(f"{p}:{lineno}: not a scores.jsonl record ({exc})") from exc


@dataclasses.dataclass
class QualityConfig:
    """Thresholds of the model-based filter (None = score and record, never drop)."""

    max_perplexity: float | None = None
    min_quality: float | None = None
    batch_size: int = 8
    max_tokens: int = 256


class QualityFilter:
    """Scores documents with the configured scorers, drops by threshold, records every score."""

    def __init__(self, cfg: QualityConfig, perplexity: PerplexityScorer | None = None,
                 classifier: TextClassifier | None = None, cache: ScoreCache | None = None, scores_out=None):
        if perplexity is None and classifier is None and cache is None:
            raise ValueError("QualityFilter: give a perplexity model, a classifier, or --scores-from")
        self.cfg, self.perplexity, self.classifier = cfg, perplexity, classifier
        self.cache = cache or ScoreCache()
        self.scores_out = scores_out

    def _scores(self, docs: list[Document], key: str, scorer) -> list[float | None]:
        out: list[float | None] = []
        todo = []
        for i, d in enumerate(docs):
            cached = self.cache.scores.get(text_sha1(d.text), {}).get(key)
            out.append(cached)
            if cached is None and scorer is not None:
                todo.append(i)
        if todo:
            for i, s in zip(todo, scorer.score([docs[i].text for i in todo])):
                out[i] = s
        return out

    def filter(self, docs: list[Document], stats: StageStats) -> list[Document]:
        """Survivors of `docs`; drops counted by reason, scores written to `scores_out`."""
        ppl = self._scores(docs, "perplexity", self.perplexity)
        qual = self._scores(docs, "quality", self.classifier)
        kept = []
        for d, p, q in zip(docs, ppl, qual):
            stats.count_in(d)
            reason = None
            if self.cfg.max_perplexity is not None and p is not None and p > self.cfg.max_perplexity:
                reason = "high_perplexity"
            elif self.cfg.min_quality is not None and q is not None and q < self.cfg.min_quality:
                reason = "low_quality_score"
            if self.scores_out is not None:
                rec = {"id": d.doc_id, "ref": d.ref, "sha1": text_sha1(d.text), "perplexity": p, "quality": q,
                       "kept": reason is None}
                self.scores_out.write(json.dumps(rec) + "\n")
            if reason:
                stats.drop(reason)
            else:
                stats.count_out(d)
                kept.append(d)
        return kept
