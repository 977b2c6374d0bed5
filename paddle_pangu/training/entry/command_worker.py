"""Per-rank entry point of `pangu evaluate / generate / serve --nproc N` (training/launch.py::run_command_launched).

argv: the pangu command and its arguments. Rank 0 writes its stdout / stderr to the files the launching
process copies to the console, and its pid where that process finds it (to pass SIGTERM on)."""
import os
import sys


def main() -> None:
    from paddle_pangu.training.launch import RANK0_ERR_ENV, RANK0_OUT_ENV, RANK0_PID_ENV

    if os.environ.get("PADDLE_TRAINER_ID", "0") == "0":
        for env, fd in ((RANK0_OUT_ENV, 1), (RANK0_ERR_ENV, 2)):
            if os.environ.get(env):
                target = os.open(os.environ[env], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(target, fd)
                os.close(target)
        if os.environ.get(RANK0_PID_ENV):
            tmp = f"{os.environ[RANK0_PID_ENV]}.tmp"
            with open(tmp, "w") as f:
                f.write(str(os.getpid()))
            os.replace(tmp, os.environ[RANK0_PID_ENV])
    from paddle_pangu.cli import main as cli_main

    code = cli_main(sys.argv[1:])
    # as train_worker.py: paddle 3.3.1's gloo groups can abort in their destructors at interpreter exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


if __name__ == "__main__":
    main()
