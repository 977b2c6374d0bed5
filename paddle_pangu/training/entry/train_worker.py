"""Per-rank entry point that `pangu train --nproc N` (and `tools/train.py`) hand to `paddle.distributed.launch`."""
import os
import sys


def main() -> None:
    from paddle_pangu.cli import main as cli_main

    code = cli_main(["train", *sys.argv[1:]])
    # The run is complete (checkpoints and final model written, every rank past the last barrier).
    # paddle 3.3.1's gloo process groups can abort (SIGABRT) in their C++ destructors at interpreter
    # exit, which the launcher would report as a failed job: leave without running them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


if __name__ == "__main__":
    main()
