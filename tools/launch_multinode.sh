#!/usr/bin/env bash
# Start this node's share of a multi-node `pangu train` job with paddle.distributed.launch.
#
# Run the same command on every node, changing only --rank (0 .. N-1). Node 0
# hosts the rendezvous at --master (its own address and a free port); the
# other nodes connect to it. Every node must see the same run YAML and the same
# initial weights / dataset paths.
#
#   tools/launch_multinode.sh --nnodes 2 --master NODE0_HOST:6170 --rank 0 --nproc 8 -- --config run.yaml
#   tools/launch_multinode.sh --nnodes 2 --master NODE0_HOST:6170 --rank 1 --nproc 8 -- --config run.yaml
#
# Options (all but --nnodes/--master/--rank have defaults):
#   --nnodes N       number of nodes in the job
#   --master H:P     node 0's address and rendezvous port
#   --rank R         this node's rank, 0 .. N-1
#   --nproc P        processes on this node (default 1; the run's world size is N x P)
#   --host IP        this node's address as the others reach it (default: paddle's detection)
#   --log-dir DIR    worker logs (default log/node<R>)
#   --job-id ID      a job name shared by all nodes (default pangu)
#   --script PATH    the entry point (default tools/train.py next to this file)
# Everything after `--` goes to the script. On CPU the job uses gloo (set by paddle
# when no accelerator is selected); set PADDLE_DISTRI_BACKEND yourself otherwise.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
nnodes="" master="" rank="" nproc=1 host="" log_dir="" job_id=pangu script="$here/train.py"
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
need() { [[ $# -ge 2 && -n "$2" ]] || { echo "launch_multinode.sh: error: $1 needs a value" >&2; exit 2; }; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --nnodes) need "$@"; nnodes="$2"; shift 2 ;;
    --master) need "$@"; master="$2"; shift 2 ;;
    --rank) need "$@"; rank="$2"; shift 2 ;;
    --nproc) need "$@"; nproc="$2"; shift 2 ;;
    --host) need "$@"; host="$2"; shift 2 ;;
    --log-dir) need "$@"; log_dir="$2"; shift 2 ;;
    --job-id) need "$@"; job_id="$2"; shift 2 ;;
    --script) need "$@"; script="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) echo "launch_multinode.sh: error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

for pair in "nnodes:$nnodes" "master:$master" "rank:$rank"; do
  [[ -n "${pair#*:}" ]] || { echo "launch_multinode.sh: error: --${pair%%:*} is required (see --help)" >&2; exit 2; }
done
[[ "$nnodes" =~ ^[1-9][0-9]*$ ]] || { echo "launch_multinode.sh: error: --nnodes=$nnodes, expected a positive integer" >&2; exit 2; }
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || { echo "launch_multinode.sh: error: --nproc=$nproc, expected a positive integer" >&2; exit 2; }
if ! [[ "$rank" =~ ^[0-9]+$ ]] || (( rank >= nnodes )); then
  echo "launch_multinode.sh: error: --rank=$rank, expected 0 .. $((nnodes - 1)) for --nnodes $nnodes" >&2; exit 2
fi
[[ "$master" =~ ^[^:]+:[0-9]+$ ]] || { echo "launch_multinode.sh: error: --master=$master, expected HOST:PORT" >&2; exit 2; }
[[ -f "$script" ]] || { echo "launch_multinode.sh: error: --script $script does not exist" >&2; exit 2; }

args=(--nnodes "$nnodes" --master "$master" --rank "$rank" --nproc_per_node "$nproc"
      --log_dir "${log_dir:-log/node$rank}" --job_id "$job_id")
[[ -n "$host" ]] && args+=(--host "$host")
exec "${PYTHON:-python}" -m paddle.distributed.launch "${args[@]}" "$script" "$@"
