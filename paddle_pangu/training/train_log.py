"""Training logs: a console line every N steps, a tqdm bar with ETA, VisualDL scalars.

Only the writer rank (global rank 0) prints and writes; other ranks get a
`TrainLogger(enabled=False)` that does nothing.
"""
from __future__ import annotations

import logging
import os
import sys
import time

logger = logging.getLogger("paddle_pangu.train")


def setup_console_logging(rank: int) -> None:
    """One stream handler with the rank in every line."""
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank}] %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class TrainLogger:
    """Console + tqdm + VisualDL for one run.

    `log_step` is called after every optimizer step; every `log_interval`
    steps it prints loss, lr, grad norm, tokens/s, step time and ETA and
    writes the same scalars under `train/` to VisualDL.
    """

    def __init__(self, enabled: bool, log_dir: str, max_steps: int, start_step: int,
                 log_interval: int, tokens_per_step: int, visualdl: bool = True, progress_bar: bool = True):
        self.enabled = enabled
        self.max_steps = max_steps
        self.log_interval = log_interval
        self.tokens_per_step = tokens_per_step
        self.start_step = start_step
        self._window: list[tuple[float, float]] = []  # (loss, seconds) since the last line
        self._t0 = time.time()
        self.writer = None
        self.bar = None
        if not enabled:
            return
        if visualdl:
            from visualdl import LogWriter

            os.makedirs(log_dir, exist_ok=True)
            self.writer = LogWriter(logdir=log_dir)
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True, file=sys.stderr, mininterval=1.0)

    def log_step(self, step: int, loss: float, lr: float, grad_norm: float | None,
                 step_time: float, extra: dict | None = None) -> None:
        """Record step `step` (1-based, after the optimizer update)."""
        if not self.enabled:
            return
        self._window.append((loss, step_time))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if step % self.log_interval and step != self.max_steps:
            return
        mean_loss = sum(x for x, _ in self._window) / len(self._window)
        mean_time = sum(t for _, t in self._window) / len(self._window)
        self._window.clear()
        tokens_per_sec = self.tokens_per_step / max(mean_time, 1e-9)
        done = step - self.start_step
        eta = (time.time() - self._t0) / max(done, 1) * (self.max_steps - step)
        norm_text = "n/a" if grad_norm is None else f"{grad_norm:.4f}"
        line = (f"step {step}/{self.max_steps} loss {mean_loss:.4f} lr {lr:.3e} grad_norm {norm_text} "
                f"tokens/s {tokens_per_sec:.0f} step_time {mean_time:.3f}s eta {_fmt(eta)}")
        for k, v in (extra or {}).items():
            line += f" {k} {v:.4f}"
        self._print(line)
        scalars = {"loss": mean_loss, "lr": lr, "tokens_per_sec": tokens_per_sec, "step_time": mean_time}
        if grad_norm is not None:
            scalars["grad_norm"] = grad_norm
        scalars.update(extra or {})
        self.scalars("train", scalars, step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(tag=f"{prefix}/{k}", value=float(v), step=step)

    def info(self, message: str) -> None:
        if self.enabled:
            self._print(message)

    def _print(self, message: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        logger.info(message)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _fmt(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
