"""Per-rank entry point that `pangu finetune --nproc N` hands to `paddle.distributed.launch`."""
import os
import sys


def main() -> None:
    from paddle_pangu.cli import main as cli_main

    code = cli_main(["finetune", *sys.argv[1:]])
    # Everything is written by now; paddle 3.3.1's gloo process groups can abort (SIGABRT) in their
    # C++ destructors at interpreter exit, which the launcher would report as a failed job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


if __name__ == "__main__":
    main()
