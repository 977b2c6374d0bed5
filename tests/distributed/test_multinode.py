"""Multi-node launch: two `tools/launch_multinode.sh` launchers on this machine as two nodes.

Node 0 and node 1 (both 127.0.0.1, each 2 CPU processes) rendezvous at node
0's --master and run one dp2 x mp2 job (world size 4) through the real entry
point (train_capture.py = tools/train.py plus a gradient recorder). The run
must be the single-process run by the training-parity rule
(parity_checks.assert_same_run: gradients, losses, learning rates, grad
norms, final weights within AdamW's bound).
"""
import os
import signal
import subprocess
import sys
import tempfile

import pytest

from paddle_pangu.parallel.ports import HeldPort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_utils import REPO_ROOT, DistributedRunError, _read_logs, _tail, _worker_env  # noqa: E402
from parity_checks import Run, assert_same_run  # noqa: E402
from train_case import CAPTURE_PY, make_initial_weights, read_metrics, run_single, write_config  # noqa: E402

pytestmark = pytest.mark.distributed

SCRIPT = REPO_ROOT / "tools" / "launch_multinode.sh"
DP2_MP2 = {"dp_degree": 2, "mp_degree": 2, "micro_batch_size": 1, "accumulate_steps": 2}  # global batch 4
REFERENCE = {"micro_batch_size": 2, "accumulate_steps": 2}
OPTIM = {"beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0}


def _start_node(rank: int, port: int, config: str, log_dir: str) -> subprocess.Popen:
    env = _worker_env(tempfile.mkdtemp(prefix="pangu_mn_out_"), {"PYTHON": sys.executable})
    cmd = ["bash", str(SCRIPT), "--nnodes", "2", "--master", f"127.0.0.1:{port}", "--rank", str(rank),
           "--nproc", "2", "--host", "127.0.0.1", "--log-dir", log_dir, "--job-id", f"mn{port}",
           "--script", str(CAPTURE_PY), "--", "--config", config]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(REPO_ROOT), start_new_session=True)


def _wait_nodes(nodes: list, log_dirs: list, timeout: float) -> list[str]:
    """Both launchers' output; on a failure or time-out kill both and raise with every worker's log tail."""
    outputs, codes = [], []
    try:
        for proc in nodes:
            out, _ = proc.communicate(timeout=timeout)
            outputs.append(out or "")
            codes.append(proc.returncode)
    except subprocess.TimeoutExpired:
        codes.append("timeout")
    if codes == [0, 0]:
        return outputs
    for proc in nodes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    report = [f"multi-node run failed: launcher exit codes {codes}"]
    for rank, log_dir in enumerate(log_dirs):
        for local, log in enumerate(_read_logs(log_dir, 2)):
            report.append(f"----- node {rank} worker {local} -----\n{_tail(log)}")
    report += [f"----- launcher {i} -----\n{_tail(o, 15)}" for i, o in enumerate(outputs)]
    raise DistributedRunError("\n".join(report))


def test_two_launchers_dp2_mp2_equal_single_process(tmp_path):
    root = str(tmp_path)
    init = make_initial_weights(os.path.join(root, "init.pdparams"))
    ref_out = os.path.join(root, "single")
    run_single(write_config(os.path.join(root, "single.yaml"), init, ref_out, REFERENCE), script=CAPTURE_PY)
    out = os.path.join(root, "multinode")
    config = write_config(os.path.join(root, "multinode.yaml"), init, out, DP2_MP2)
    log_dirs = [os.path.join(root, f"node{r}") for r in (0, 1)]
    # the rendezvous port stays held (bound, never listening) for the whole run: no other process is handed it
    # between here and the launcher's master binding it (SO_REUSEADDR, see paddle_pangu/parallel/ports.py)
    with HeldPort("0.0.0.0") as held:
        nodes = [_start_node(r, held.port, config, log_dirs[r]) for r in (0, 1)]
        _wait_nodes(nodes, log_dirs, timeout=500)
    for log_dir in log_dirs:  # each launcher ran its own two workers
        assert sorted(n for n in os.listdir(log_dir) if n.startswith("workerlog.")) == ["workerlog.0", "workerlog.1"]
    grads = sorted(os.listdir(os.path.join(out, "grads")))
    assert grads == [f"rank{r}.pkl" for r in range(4)], grads  # global ranks 0-3 across the two nodes
    run = assert_same_run(out, Run(ref_out), OPTIM)
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4] and run.steps == [1, 2, 3, 4]


@pytest.mark.parametrize("args, message", [
    (["--nnodes", "2", "--master", "127.0.0.1:6170", "--rank", "2"], "--rank=2, expected 0 .. 1 for --nnodes 2"),
    (["--nnodes", "2", "--master", "127.0.0.1", "--rank", "0"], "--master=127.0.0.1, expected HOST:PORT"),
    (["--nnodes", "2", "--rank", "0"], "--master is required"),
])
def test_launcher_script_rejects_bad_arguments(args, message):
    proc = subprocess.run(["bash", str(SCRIPT), *args, "--", "--config", "x.yaml"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
