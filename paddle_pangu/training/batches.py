"""Which samples each rank trains on at each step: a pure function of (seed, step, data rank).

Global sample index of local sample j at optimizer step t on data-parallel
rank r (r over dp x sharding) is `t * G + r * P + j`, where P is the
per-rank batch (micro_batch_size x accumulate_steps) and G = P x data ranks
the global batch. Indices wrap over the dataset through a per-epoch
permutation seeded by (seed, epoch). Nothing is stateful, so a resumed run at
step k reads exactly what the uninterrupted run read, and a dp2 run reads the
same global batch as one process.
"""
from __future__ import annotations

import numpy as np


class SyntheticTokens:
    """Deterministic random token samples of length seq_len + 1 (tests; no tokenizer, no files).

    Ids are drawn from [10, vocab_size), above every special id (REF
    "Tokenizer": pad 6, eod 8, eot 9), so no token is masked out of the loss;
    with `eod_every` > 0 an `eod_token_id` is put every `eod_every` tokens to
    exercise document resets.
    """

    def __init__(self, num_samples: int, seq_len: int, vocab_size: int, seed: int,
                 eod_every: int = 0, eod_token_id: int = 9):
        if vocab_size <= 10:
            raise ValueError(f"synthetic data needs vocab_size > 10, got {vocab_size}")
        self.num_samples, self.seq_len, self.vocab_size = int(num_samples), int(seq_len), int(vocab_size)
        self.seed, self.eod_every, self.eod_token_id = int(seed), int(eod_every), int(eod_token_id)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> np.ndarray:
        rng = np.random.RandomState((self.seed * 1_000_003 + int(idx)) % (2**32))
        sample = rng.randint(10, self.vocab_size, size=self.seq_len + 1).astype("int64")  # [S+1]
        if self.eod_every > 0:
            sample[self.eod_every - 1::self.eod_every] = self.eod_token_id
        return sample


class StepBatcher:
    """Per-rank batches for step t: [per_rank, seq_len + 1] int64, deterministic."""

    def __init__(self, dataset, per_rank: int, data_rank: int, data_world: int, seed: int):
        if len(dataset) == 0:
            raise ValueError("the dataset is empty: nothing to train on")
        self.dataset = dataset
        self.per_rank, self.data_rank, self.data_world = int(per_rank), int(data_rank), int(data_world)
        self.global_batch = self.per_rank * self.data_world
        self.seed = int(seed)
        self._perm_epoch, self._perm = -1, None

    def _dataset_index(self, global_index: int) -> int:
        n = len(self.dataset)
        epoch, offset = divmod(global_index, n)
        if epoch != self._perm_epoch:
            self._perm = np.random.RandomState((self.seed + 7919 * epoch) % (2**32)).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[offset])

    def indices(self, step: int) -> list[int]:
        """Global sample indices this rank reads at `step` (0-based)."""
        start = step * self.global_batch + self.data_rank * self.per_rank
        return list(range(start, start + self.per_rank))

    def batch(self, step: int) -> np.ndarray:
        rows = [np.asarray(self.dataset[self._dataset_index(i)], dtype="int64") for i in self.indices(step)]
        return np.stack(rows)  # [per_rank, S+1]


def split_tokens_labels(batch: np.ndarray):
    """[B, S+1] -> tokens [B, S], labels [B, S] (REF "Packing": tokens = s[:-1], labels = s[1:])."""
    return batch[:, :-1], batch[:, 1:]


def run_datasets(cfg, model_config, global_batch: int, which=("train", "valid")) -> dict:
    """The datasets of a run config: {'train': ..., 'valid': ...} (only the names in `which`).

    Synthetic data, or `pangu prepare-data` datasets sized for the run:
    train = max_steps x global batch samples, valid = one set of
    `eval_iters` batches per evaluation.
    """
    seq = cfg.seq_len
    synthetic = cfg.data.synthetic
    valid_n = max(global_batch * cfg.train.eval_iters, 1)
    if synthetic is not None:
        vocab = synthetic.vocab_size or model_config.vocab_size
        sizes = {"train": (synthetic.num_samples, cfg.train.seed), "valid": (valid_n, cfg.train.seed + 10_000)}
        return {name: SyntheticTokens(sizes[name][0], seq, vocab, sizes[name][1], synthetic.eod_every,
                                      model_config.eod_token_id) for name in which}
    from paddle_pangu.data import build_pretraining_datasets
    from paddle_pangu.data.contract import RunDataContract

    evals = 1 + (cfg.train.max_steps // cfg.train.eval_interval if cfg.train.eval_interval else 0)
    wanted = {"train": cfg.train.max_steps * global_batch, "valid": evals * valid_n}
    ratios = [float(r) for r in cfg.data.splits] if cfg.data.splits else None  # None: the manifest's split
    sets = build_pretraining_datasets(cfg.data.paths, cfg.data.weights, seq, {k: wanted[k] for k in which},
                                      cfg.train.seed, splits=("train", "valid", "test"), split_ratios=ratios,
                                      contract=RunDataContract.for_run(model_config, cfg.data.tokenizer))
    return {name: sets.get(name) for name in which}
