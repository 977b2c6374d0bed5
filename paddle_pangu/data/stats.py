"""Documents flowing through the pipeline, and the counters that describe a run.

Every stage reports into one `PipelineStats`: documents in/out, drops by
reason, in-place modifications, and input problems (`IssueLog`) with the file
and line where they happened. The stats object renders as JSON (machine
readable, written to `stats.json`) and as a fixed-width table (`stats.txt`,
printed at the end of `pangu prepare-data`).
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from typing import Any


@dataclasses.dataclass
class Document:
    """One document: its text plus where it came from.

    Attributes:
        text: the document text (paragraphs separated by "\\n").
        source: short name of the input it came from (file stem or builtin name).
        ref: "path:line" of its first line, for reports.
        doc_id: running number in input order, assigned by the reader chain.
    """

    text: str
    source: str
    ref: str
    doc_id: int = -1

    def to_json(self) -> str:
        return json.dumps({"id": self.doc_id, "source": self.source, "ref": self.ref, "text": self.text}, ensure_ascii=False)


class IssueLog:
    """Counts input problems (bad JSON, undecodable bytes, empty files...).

    Every problem is counted; the first `max_examples` per kind are kept with
    file, line and detail so the report says exactly where to look.
    """

    def __init__(self, max_examples: int = 50):
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}

    def add(self, kind: str, path: str, line: int | None, detail: str = "") -> None:
        self.counts[kind] += 1
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < self.max_examples:
            bucket.append({"file": str(path), "line": line, "detail": detail[:200]})

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "examples": self.examples}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "IssueLog":
        """The inverse of `to_dict` (shard stats travel and are kept on disk as JSON, never pickled)."""
        log = cls()
        log.counts.update({str(k): int(v) for k, v in d["counts"].items()})
        log.examples = {str(k): list(v) for k, v in d["examples"].items()}
        return log


@dataclasses.dataclass
class StageStats:
    """Counters of one stage."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    dropped: Counter = dataclasses.field(default_factory=Counter)
    modified: Counter = dataclasses.field(default_factory=Counter)
    seconds: float = 0.0
    extra: dict = dataclasses.field(default_factory=dict)

    def count_in(self, doc: Document) -> None:
        self.docs_in += 1
        self.chars_in += len(doc.text)

    def count_out(self, doc: Document) -> None:
        self.docs_out += 1
        self.chars_out += len(doc.text)

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def merge(self, other: "StageStats") -> None:
        for f in ("docs_in", "docs_out", "chars_in", "chars_out"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.dropped.update(other.dropped)
        self.modified.update(other.modified)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "docs_in": self.docs_in, "docs_out": self.docs_out,
            "chars_in": self.chars_in, "chars_out": self.chars_out,
            "dropped": dict(self.dropped), "modified": dict(self.modified),
            "seconds": round(self.seconds, 3),
        }
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> "StageStats":
        """The inverse of `to_dict` (unknown keys go back to `extra`)."""
        known = ("docs_in", "docs_out", "chars_in", "chars_out", "dropped", "modified", "seconds")
        return cls(name, int(d["docs_in"]), int(d["docs_out"]), int(d["chars_in"]), int(d["chars_out"]),
                   Counter(d["dropped"]), Counter(d["modified"]), float(d["seconds"]),
                   {k: v for k, v in d.items() if k not in known})


class PipelineStats:
    """All counters of one `prepare-data` run, in stage order."""

    def __init__(self):
        self.stages: dict[str, StageStats] = {}
        self.issues = IssueLog()
        self.summary: dict[str, Any] = {}
        self._t0: dict[str, float] = {}

    def stage(self, name: str) -> StageStats:
        if name not in self.stages:
            self.stages[name] = StageStats(name)
        return self.stages[name]

    def start(self, name: str) -> StageStats:
        self._t0[name] = time.perf_counter()
        return self.stage(name)

    def stop(self, name: str) -> None:
        self.stage(name).seconds += time.perf_counter() - self._t0.pop(name, time.perf_counter())

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
            "issues": self.issues.to_dict(),
            "summary": self.summary,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2)

    def to_table(self) -> str:
        """Readable report: one row per stage, then drop reasons, issues, summary."""
        rows = [f"{'stage':<12}{'docs in':>10}{'docs out':>10}{'dropped':>10}{'chars out':>13}{'seconds':>9}"]
        for s in self.stages.values():
            seconds = f"{s.seconds:.1f}" if s.seconds else "-"
            rows.append(
                f"{s.name:<12}{s.docs_in:>10}{s.docs_out:>10}{s.docs_in - s.docs_out:>10}"
                f"{s.chars_out:>13}{seconds:>9}"
            )
        rows.append("")
        rows.append(f"{'stage':<12}{'drop reason / modification':<34}{'docs':>10}")
        for s in self.stages.values():
            for reason, n in sorted(s.dropped.items(), key=lambda kv: -kv[1]):
                rows.append(f"{s.name:<12}{'drop: ' + reason:<34}{n:>10}")
            for what, n in sorted(s.modified.items(), key=lambda kv: -kv[1]):
                rows.append(f"{s.name:<12}{'modified: ' + what:<34}{n:>10}")
        if self.issues.counts:
            rows.append("")
            rows.append("input problems (skipped, see stats.json for file:line):")
            for kind, n in sorted(self.issues.counts.items()):
                first = self.issues.examples.get(kind, [{}])[0]
                where = f"{first.get('file')}:{first.get('line')}" if first else ""
                rows.append(f"  {kind:<30}{n:>8}   first at {where}")
        if self.summary:
            rows.append("")
            for k, v in self.summary.items():
                rows.append(f"{k:<46}{v}")
        return "\n".join(rows)
