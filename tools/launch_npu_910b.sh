#!/usr/bin/env bash
# Launch `pangu train` on one Ascend 910B node (8 NPUs), or on each node of a multi-node job.
#
# NOT RUN BY THIS PROJECT: the project's machines have no Ascend device. The script is written
# after PaddleNLP's Ascend LLM recipes (llm/npu/llama/*.sh) and the paddle-custom-npu docs;
# the device selection it relies on (`--device npu`, paddle_pangu/parallel/device.py) is unit-tested.
#
# Prerequisites on the node:
#   * CANN toolkit installed (default /usr/local/Ascend), driver loaded, `npu-smi info` lists 8 NPUs;
#   * paddlepaddle==3.3.1 (CPU wheel) + paddle-custom-npu from Paddle's own package index (not PyPI);
#   * this repo installed (`pip install -e .`) and the prepared datasets the YAML names.
#
# Usage (single node):   bash tools/launch_npu_910b.sh configs/pretrain/2.6b_mp8_sharding.yaml
# Multi-node: run the same command on every node with
#   MASTER=<ip of node 0>:<port> NNODES=<n>   (e.g. 2.6B config: 64 devices -> NNODES=8)
# Extra arguments after the YAML go to `pangu train` (e.g. --set train.max_steps=10).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG="${1:?usage: launch_npu_910b.sh CONFIG.yaml [pangu train args...]}"
shift
DEVICES="${DEVICES:-0,1,2,3,4,5,6,7}"
NNODES="${NNODES:-1}"
LOG_DIR="${LOG_DIR:-logs/npu_$(basename "$CONFIG" .yaml)}"

# CANN runtime + HCCL (Ascend's collective library; paddle's "xccl" backend dispatches to it)
ASCEND_HOME="${ASCEND_HOME:-/usr/local/Ascend}"
if [[ -f "$ASCEND_HOME/ascend-toolkit/set_env.sh" ]]; then
    # shellcheck disable=SC1091
    source "$ASCEND_HOME/ascend-toolkit/set_env.sh"
else
    echo "warning: $ASCEND_HOME/ascend-toolkit/set_env.sh not found; is CANN installed?" >&2
fi
export ASCEND_RT_VISIBLE_DEVICES="$DEVICES"
export PADDLE_XCCL_BACKEND=npu                 # paddle collective backend for the custom device
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}"
export HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-1200}"
export HCCL_BUFFSIZE="${HCCL_BUFFSIZE:-120}"   # MB per HCCL buffer (mp all-reduces of [B,S,H] activations)
# The flags below are also the defaults paddle_pangu.parallel.device.npu_env_defaults applies;
# exporting them here makes them visible to the plugin before paddle initialises the device.
export FLAGS_npu_storage_format="${FLAGS_npu_storage_format:-1}"
export FLAGS_use_stride_kernel="${FLAGS_use_stride_kernel:-0}"
export FLAGS_allocator_strategy="${FLAGS_allocator_strategy:-naive_best_fit}"
export HCCL_OP_BASE_FFTS_MODE_ENABLE="${HCCL_OP_BASE_FFTS_MODE_ENABLE:-TRUE}"
export HCCL_INTRA_PCIE_ENABLE="${HCCL_INTRA_PCIE_ENABLE:-0}"
export HCCL_INTRA_ROCE_ENABLE="${HCCL_INTRA_ROCE_ENABLE:-1}"
export MULTI_STREAM_MEMORY_REUSE="${MULTI_STREAM_MEMORY_REUSE:-1}"

LAUNCH=(python -m paddle.distributed.launch --devices "$DEVICES" --log_dir "$LOG_DIR")
if [[ "$NNODES" -gt 1 ]]; then
    LAUNCH+=(--master "${MASTER:?set MASTER=<node0 ip>:<port> for a multi-node job}" --nnodes "$NNODES")
fi

# Validate the layout against the job's world size before touching any device.
WORLD=$(( NNODES * $(awk -F, '{print NF}' <<< "$DEVICES") ))
PADDLE_TRAINERS_NUM="$WORLD" pangu train --config "$CONFIG" --device npu --check-only "$@"

exec "${LAUNCH[@]}" tools/train.py --config "$CONFIG" --device npu "$@"
