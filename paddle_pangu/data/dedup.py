"""Stage 4: fuzzy deduplication across all sources with MinHash + LSH (datasketch).

The paper deduplicates fuzzily across all sources with its own distributed
algorithm and gives no parameters (REF "Data pipeline"); MinHash over
character shingles with banded LSH is the standard equivalent:

  1. normalise (lower-case, drop whitespace and punctuation) and cut the text
     into character `shingle_size`-grams; hash each shingle to 32 bits with a
     vectorised polynomial hash + murmur finaliser (numpy, deterministic
     across processes, unlike Python's salted `hash`);
  2. MinHash signature of the shingle set (`num_perm` permutations, datasketch);
  3. LSH with `bands` x `rows` (or datasketch's optimum for `threshold`)
     proposes candidate pairs; each candidate is verified by the estimated
     Jaccard similarity of the two signatures (>= threshold) to cut false
     positives;
  4. verified pairs are joined into clusters (union-find); the first document
     of each cluster in input order is kept, the rest are dropped.

Signatures are computed per document (parallel, per shard); the LSH index is
the one global pass (see docs/DATA.md for the distributed version).
"""
from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np

from .cleaning import PUNCTUATION, category_regex

_MIX1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_BASE = np.uint64(0x100000001B3)  # FNV prime: odd, so the polynomial hash wraps well mod 2^64


@dataclasses.dataclass
class DedupConfig:
    """MinHash-LSH settings.

    Attributes:
        shingle_size: characters per shingle (5 suits Chinese: one or two words).
        num_perm: MinHash permutations (signature length).
        threshold: Jaccard similarity above which two documents are duplicates
            (0.5, as GPT-3 / The Pile: distinct news articles sit near 0.01, an
            article with ~1% characters edited and a sentence inserted or
            deleted sits at 0.65-0.95 with 5-character shingles).
        bands, rows: explicit LSH banding (bands * rows must equal num_perm);
            None lets datasketch choose the optimum for `threshold`.
        seed: permutation seed (same seed on every shard!).
        verify: check LSH candidates by estimated Jaccard >= threshold.
    """

    shingle_size: int = 5
    num_perm: int = 128
    threshold: float = 0.5
    bands: int | None = None
    rows: int | None = None
    seed: int = 1
    verify: bool = True

    def validate(self) -> None:
        if self.shingle_size < 1:
            raise ValueError(f"DedupConfig.shingle_size={self.shingle_size}: must be >= 1")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"DedupConfig.threshold={self.threshold}: expected a value in (0, 1)")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("DedupConfig: give both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows != self.num_perm:
            raise ValueError(
                f"DedupConfig: bands*rows = {self.bands}*{self.rows} = {self.bands * self.rows} "
                f"must equal num_perm={self.num_perm}"
            )


def _identity(x):
    return x


def normalise_for_dedup(text: str) -> str:
    """Lower-case; no whitespace or punctuation (they carry no content for near-duplicates)."""
    symbols = category_regex(PUNCTUATION + ("Sm", "So", "Sk", "Sc"))
    return symbols.sub("", re.sub(r"\s+", "", text.lower()))


def shingle_hashes(text: str, k: int) -> np.ndarray:
    """Unique 32-bit hashes of the character k-grams of `text` (normalised first)."""
    norm = normalise_for_dedup(text)
    if not norm:
        return np.zeros(0, dtype=np.uint64)
    cps = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)  # [n]
    k = min(k, len(cps))
    n = len(cps) - k + 1
    h = np.zeros(n, dtype=np.uint64)  # [n] polynomial hash of each window, mod 2^64
    for j in range(k):
        h = h * _BASE + cps[j:j + n]
    h ^= h >> np.uint64(33)  # murmur3 fmix64: spread the bits before truncating to 32
    h *= _MIX1
    h ^= h >> np.uint64(33)
    h *= _MIX2
    h ^= h >> np.uint64(33)
    return np.unique(h & np.uint64(0xFFFFFFFF))


@dataclasses.dataclass
class DedupResult:
    """Outcome of a dedup pass: clusters of keys (first = kept) and the keys to drop."""

    clusters: list[list]
    drop: set
    candidate_pairs: int = 0
    verified_pairs: int = 0

    def to_dict(self) -> dict:
        return {
            "clusters": len(self.clusters),
            "documents_in_clusters": sum(len(c) for c in self.clusters),
            "documents_removed": len(self.drop),
            "lsh_candidate_pairs": self.candidate_pairs,
            "verified_pairs": self.verified_pairs,
        }


# ---- LSH banding on arrays: the one candidate-pair rule of both engines ----------------------------
_KEY_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)  # the two halves of a 128-bit band key


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a bijection that spreads every bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def band_keys(sigs: np.ndarray, ranges: list) -> tuple[np.ndarray, np.ndarray]:
    """(h1, h2) [len(ranges), n] uint64: a 128-bit key per (band, document) from the band number and the
    band's hash values, so two documents share a key iff they share that band (up to a 2^-128 collision,
    which the Jaccard verification would still have to pass)."""
    n = len(sigs)
    h1, h2 = np.empty((len(ranges), n), np.uint64), np.empty((len(ranges), n), np.uint64)
    for b, (lo, hi) in enumerate(ranges):
        a = np.full(n, _KEY_SEEDS[0] ^ b, np.uint64)
        c = np.full(n, _KEY_SEEDS[1] ^ b, np.uint64)
        for j in range(lo, hi):
            a = _mix64(a ^ sigs[:, j])
            c = _mix64(c + sigs[:, j] + np.uint64(j))
        h1[b], h2[b] = a, c
    return h1, h2


def bucket_pairs(h1: np.ndarray, h2: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Candidate pairs [m, 2] int64 (a < b, possibly repeated across bands) of every bucket of rows that
    share a band key (h1, h2): all (band, document) rows given, in any order."""
    if not len(h1):
        return np.zeros((0, 2), np.int64)
    order = np.lexsort((docs, h2, h1))
    h1, h2, docs = h1[order], h2[order], docs[order]
    new = np.ones(len(h1), bool)
    new[1:] = (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(h1)))
    pairs = [np.zeros((0, 2), np.int64)]
    for size in np.unique(sizes[sizes > 1]).tolist():  # most buckets hold one document, most others two
        members = docs[starts[sizes == size][:, None] + np.arange(size)]  # [buckets of this size, size]
        i, j = np.triu_indices(size, 1)
        pairs.append(np.stack([members[:, i], members[:, j]], axis=2).reshape(-1, 2))
    return np.concatenate(pairs)


def unique_pairs(pairs: np.ndarray) -> np.ndarray:
    """`np.unique(pairs, axis=0)` of non-negative int64 pairs [m, 2], sorted the same way, through one
    int64 code per pair (a row-wise unique sorts structured rows: 3x slower)."""
    if not len(pairs):
        return np.zeros((0, 2), np.int64)
    n = int(pairs.max()) + 1
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])  # < n^2: exact in int64 below 3e9 documents
    return np.stack([codes // n, codes % n], axis=1)


def lsh_bands_rows(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows) of the LSH index: the configured ones, or datasketch's choice for the threshold
    (`MinHashLSH(threshold, num_perm)`: its `_optimal_param` with weights 0.5 / 0.5; b x r may be < num_perm,
    the bands then cover the first b x r positions). That choice integrates with scipy, whose import is
    0.4-0.6 CPU-s per process (a Ray driver paid it while its workers scanned), so it is computed once per
    datasketch version, threshold and num_perm and kept beside the kernels (`io/json_cache.py`)."""
    if cfg.bands is not None:
        return int(cfg.bands), int(cfg.rows)
    return _optimal_bands_rows(float(cfg.threshold), int(cfg.num_perm))


@functools.lru_cache(maxsize=16)
def _optimal_bands_rows(threshold: float, num_perm: int) -> tuple[int, int]:
    from importlib.metadata import PackageNotFoundError, version

    from ..kernels.native_build import cache_root
    from ..io.json_cache import cached_json

    def compute():
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        return [int(lsh.b), int(lsh.r)]

    def decode(value):
        b, r = (int(v) for v in value)
        if b < 1 or r < 1 or b * r > num_perm:
            raise ValueError(f"bands x rows {b} x {r} outside num_perm {num_perm}")
        return b, r

    try:
        ver = version("datasketch")
    except PackageNotFoundError:
        return decode(compute())  # (the import then says what is missing)
    name = f"lsh_bands_rows_datasketch{ver}_t{threshold!r}_p{num_perm}.json"
    return cached_json(cache_root("kernels") / name, compute, decode)


def jaccard_passes(sigs: np.ndarray, a: np.ndarray, b: np.ndarray, threshold: float, chunk: int = 1 << 14):
    """[m] bool: the estimated Jaccard of signature rows a[i] and b[i] (the share of equal positions of sigs
    [docs, num_perm]) >= threshold; the one verification rule of both engines, in chunks of `chunk` pairs so
    the [chunk, num_perm] temporaries stay small."""
    keep = np.zeros(len(a), bool)
    for lo in range(0, len(a), chunk):
        same = np.count_nonzero(sigs[a[lo:lo + chunk]] == sigs[b[lo:lo + chunk]], axis=1)
        keep[lo:lo + chunk] = same / sigs.shape[1] >= threshold
    return keep


class MinHashDeduplicator:
    """Near-duplicate finder: `add(key, signature)` in input order, then `result()`.

    The LSH decision is made on arrays once every document is in (`result`): each document's band keys
    (`band_keys`, b x r chosen by datasketch's MinHashLSH for the threshold: `lsh_bands_rows`), candidate pairs from the
    buckets (`bucket_pairs`), verified by the estimated Jaccard, then `clusters_from_pairs`: the same rule
    and the same functions as the Ray engine's shuffle. (It was datasketch's streaming query + insert per
    document: the same clusters, ~160 us of Python per document.) `signature(text)` is pure and picklable,
    so it can run in worker processes.
    """

    def __init__(self, cfg: DedupConfig | None = None):
        self.cfg = cfg or DedupConfig()
        self.cfg.validate()
        self._bands_rows = lsh_bands_rows(self.cfg)
        self._order: dict = {}
        self._values: list = []
        self.candidate_pairs = 0
        self.verified_pairs = 0

    @property
    def bands_rows(self) -> tuple[int, int]:
        return self._bands_rows

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """[start, end) of each band's signature positions (datasketch's `hashranges`)."""
        b, r = self._bands_rows
        return [(i * r, (i + 1) * r) for i in range(b)]

    def signature(self, text: str):
        """datasketch MinHash of the text's shingle set."""
        return minhash_signature(text, self.cfg)

    def add(self, key, sig) -> None:
        """Index one document: `sig` a datasketch MinHash or its hash values [num_perm]."""
        if key in self._order:
            raise ValueError(f"dedup key {key!r} added twice")
        self._order[key] = len(self._order)
        self._values.append(np.asarray(getattr(sig, "hashvalues", sig)))

    def keys_and_signatures(self) -> tuple[list, np.ndarray]:
        """The indexed keys in the order they were added and their signatures [docs, num_perm] (what a
        resumable run saves after pass 1 and adds back in the same order)."""
        sigs = np.stack(self._values) if self._values else np.zeros((0, self.cfg.num_perm), np.uint64)
        return list(self._order), sigs

    def result(self) -> DedupResult:
        keys = list(self._order)
        if not keys:
            return clusters_from_pairs([], [])
        sigs = np.stack(self._values)  # [docs, num_perm]
        h1, h2 = band_keys(sigs, self.ranges)  # [bands, docs] each
        rows = np.broadcast_to(np.arange(len(keys), dtype=np.int64), h1.shape)
        candidates = unique_pairs(bucket_pairs(h1.ravel(), h2.ravel(), rows.ravel()))  # [m, 2], a < b
        verified = candidates
        if self.cfg.verify and len(candidates):
            verified = candidates[jaccard_passes(sigs, candidates[:, 0], candidates[:, 1], self.cfg.threshold)]
        self.candidate_pairs, self.verified_pairs = len(candidates), len(verified)
        result = clusters_from_pairs(keys, [(keys[a], keys[b]) for a, b in verified.tolist()])
        result.candidate_pairs, result.verified_pairs = self.candidate_pairs, self.verified_pairs
        return result


def _clusters(keys_in_order: list, find, candidate_pairs: int = 0, verified_pairs: int = 0) -> DedupResult:
    """The one clustering rule: groups of the union-find, each listing its members in input order; the
    first member is kept, the rest are dropped; clusters ordered by their first member."""
    groups: dict = {}
    for key in keys_in_order:
        groups.setdefault(find(key), []).append(key)
    clusters = [g for g in groups.values() if len(g) > 1]
    drop = {k for g in clusters for k in g[1:]}
    return DedupResult(clusters, drop, candidate_pairs, verified_pairs)


def clusters_from_pairs(keys_in_order: list, pairs) -> DedupResult:
    """Clusters of verified duplicate pairs (e.g. from a distributed LSH), by the same rule as
    `MinHashDeduplicator.result`: connected components, earliest document kept."""
    rank = {k: i for i, k in enumerate(keys_in_order)}
    parent = {k: k for k in keys_in_order}

    def find(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:  # the root is always the earliest document of the cluster
            first, second = (ra, rb) if rank[ra] < rank[rb] else (rb, ra)
            parent[second] = first
    return _clusters(keys_in_order, find)


@functools.lru_cache(maxsize=4)
def _empty_minhash(num_perm: int, seed: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity)


_MERSENNE = np.uint64((1 << 61) - 1)  # datasketch's "legacy" scheme: (a * h + b) mod (2^61 - 1), low 32 bits
_MAX_HASH = np.uint64((1 << 32) - 1)


def _default_scheme() -> str:
    """The scheme of datasketch's `MinHash()` (no scheme given), read from its installed version without
    importing it (its import pulls in scipy: 0.4-1.2 s per worker process, only for these arrays): "affine32"
    from 2.0 on, "legacy" before. None for a major version this code does not know (then datasketch decides)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("datasketch").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return None
    return {1: "legacy", 2: "affine32"}.get(major)


def datasketch_permutations(num_perm: int, seed: int, scheme: str):
    """(a [num_perm], b [num_perm], empty hash values [num_perm]) exactly as datasketch 2.0's
    `MinHash._init_permutations` / `_init_hashvalues` make them (same RandomState draws, same dtypes), in
    numpy alone; tested equal to datasketch's for both schemes."""
    gen = np.random.RandomState(seed)
    if scheme == "legacy":  # one (a, b) pair per permutation, drawn in turn
        ab = np.array([(gen.randint(1, _MERSENNE, dtype=np.uint64), gen.randint(0, _MERSENNE, dtype=np.uint64))
                       for _ in range(num_perm)], dtype=np.uint64).T  # [2, num_perm]
        return ab[0], ab[1], np.full(num_perm, _MAX_HASH, np.uint64)
    if scheme == "affine32":  # odd a (a bijection mod 2^32), then b
        a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
        b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
        return a, b, np.full(num_perm, np.uint32(0xFFFFFFFF), np.uint32)
    raise ValueError(f"datasketch MinHash scheme {scheme!r}: not one this code generates")


@functools.lru_cache(maxsize=4)
def _permutations(num_perm: int, seed: int):
    """(scheme, a [1, num_perm], b [1, num_perm], empty hash values [num_perm]) of datasketch's MinHash."""
    scheme = _default_scheme()
    if scheme is None:  # an unknown datasketch: ask it
        m = _empty_minhash(num_perm, seed)
        a, b = m.permutations
        return getattr(m, "scheme", "legacy"), a.reshape(1, -1), b.reshape(1, -1), m.hashvalues.copy()
    a, b, empty = datasketch_permutations(num_perm, seed, scheme)
    return scheme, a.reshape(1, -1), b.reshape(1, -1), empty


USE_COMPILED = True  # the tests turn it off to check the numpy path too


def _compiled_minhash():
    """`minhash` of the compiled extension (paddle_pangu/tokenizer/jieba_exact.cc), or None (numpy then)."""
    if not USE_COMPILED:
        return None
    from ..tokenizer import fastseg

    ext = fastseg.extension()
    return ext.minhash if ext is not None else None


def _fmix32() -> tuple:
    """murmur3's 32-bit finaliser (shift, multiplier, shift, multiplier, shift): datasketch 2.0's
    `_FMIX_CONSTANTS[32]` pre-mix of the affine schemes (tested equal)."""
    return (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)


def minhash_values(text: str, cfg: DedupConfig) -> np.ndarray:
    """MinHash values [num_perm] of the shingle set of `text`: the same numbers (and dtype) as datasketch's
    `MinHash(num_perm, seed, hashfunc=identity).update_batch(shingle_hashes(...))`, computed in numpy with no
    per-document MinHash object or Python list (worker-safe). Follows datasketch's permutation scheme
    (2.0: "affine32" by default, "legacy" before). Compiled (the extension's `minhash`: one loop, no
    [n, num_perm] temporaries) when the extension builds, numpy otherwise; both tested against datasketch."""
    scheme, a, b, empty = _permutations(cfg.num_perm, cfg.seed)
    compiled = _compiled_minhash()
    if compiled is not None and scheme in ("legacy", "affine32"):
        norm = normalise_for_dedup(text)
        if not norm:
            return empty.copy()
        out = compiled(norm, cfg.shingle_size, a.tobytes(), b.tobytes(), scheme == "legacy", _fmix32())
        return np.frombuffer(out, dtype=empty.dtype).copy()
    hashes = shingle_hashes(text, cfg.shingle_size)  # [n] uint64 holding 32-bit values
    if not len(hashes):
        return empty.copy()
    if scheme == "legacy":
        y = hashes.reshape(-1, 1) * a + b  # [n, num_perm], wraps mod 2^64 as datasketch's numpy product does
        # y mod (2^61 - 1) without numpy's slow integer division: (y & p) + (y >> 61) is congruent and < 2p
        r = (y & _MERSENNE) + (y >> np.uint64(61))
        r -= _MERSENNE * (r >= _MERSENNE)
        phv = r & _MAX_HASH
    else:  # affine: fmix pre-mix, then a * h + b mod 2^width in the scheme's dtype
        from datasketch.minhash import _SCHEME_WIDTHS, _fmix

        mixed = _fmix(hashes.astype(empty.dtype), _SCHEME_WIDTHS[scheme])  # [n]
        phv = np.multiply(a.reshape(-1, 1), mixed.reshape(1, -1))  # [num_perm, n]: rows reduce contiguously
        phv += b.reshape(-1, 1)
        return np.minimum(empty, phv.min(axis=1))
    return np.minimum(empty, phv.min(axis=0))


def minhash_signature(text: str, cfg: DedupConfig):
    """datasketch MinHash of the shingle set of `text` under `cfg` (worker-safe)."""
    return minhash_from_values(minhash_values(text, cfg), cfg)


def minhash_from_values(values: np.ndarray, cfg: DedupConfig):
    """Rebuild a MinHash from hash values computed in another process."""
    m = _empty_minhash(cfg.num_perm, cfg.seed).copy()
    m.hashvalues = np.asarray(values, dtype=m.hashvalues.dtype)
    return m


def find_near_duplicates(texts: list[str], cfg: DedupConfig | None = None) -> DedupResult:
    """Convenience for in-memory lists: keys are list positions."""
    dedup = MinHashDeduplicator(cfg)
    for i, text in enumerate(texts):
        dedup.add(i, dedup.signature(text))
    return dedup.result()
