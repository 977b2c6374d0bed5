"""Planner: exact bytes and seconds from the closed forms (docs/PLANNER.md) on small shapes, parameter
placement against the real model, and the paper's layouts judged on the paper's cluster."""
import pytest

from paddle_pangu.config import get_preset
from paddle_pangu.config.parallel_config import ParallelConfig
from paddle_pangu.planner import Hardware, estimate, memory_terms, plan
from paddle_pangu.planner.estimate import GIB, parameter_sizes, sharded_parameters, stage_parameters, step_seconds
from paddle_pangu.planner.hardware import PRESETS, get_device_preset

TINY_PARAMS = 2_726_464  # tiny: h 64, 3 layers (2 blocks + query layer), 4 heads, ffn 256, vocab 40000, 128 positions
CPU = Hardware.from_preset(get_device_preset("cpu"), 1, "float32")


def _cpu(devices):
    return Hardware.from_preset(get_device_preset("cpu"), devices, "float32")


@pytest.mark.parametrize("name", ["350m", "2.6b", "13b"])
def test_single_device_holds_every_parameter(name):
    config = get_preset(name)
    assert stage_parameters(config, ParallelConfig()) == config.num_parameters()


def test_parameter_tensors_are_the_models():
    from paddle_pangu.model.modeling import PanGuForCausalLM

    model = PanGuForCausalLM(get_preset("tiny"))
    real = sorted(int(p.numel()) for p in model.parameters())
    assert sorted(parameter_sizes(get_preset("tiny"), ParallelConfig())) == real
    assert sum(real) == TINY_PARAMS


def test_pipeline_stages_hold_embedding_and_tied_head_copy():
    config = get_preset("mini")  # 4 layers -> 2 per stage; measured on 2 processes: 11,885,056 and 11,885,568
    par = ParallelConfig(pp_degree=2)
    h, v, s = 256, 40000, 256
    block = 4 * h + 4 * h * h + 3 * h + h + 2 * h * 1024 + 1024 + h
    assert stage_parameters(config, par, 0) == 2 * block + v * h + s * h == 11_885_056
    assert stage_parameters(config, par, 1) == 2 * block + v * h + s * h + 2 * h == 11_885_568
    assert sum(parameter_sizes(config, par, 1)) == 11_885_568


def test_tensor_parallel_splits_matrices_not_layernorms():
    config = get_preset("2.6b")
    full = stage_parameters(config, ParallelConfig())
    mp8 = stage_parameters(config, ParallelConfig(mp_degree=8))
    h, layers = config.hidden_size, config.num_layers
    replicated = layers * (6 * h) + 2 * config.max_position_embeddings * h + 2 * h  # LNs, out biases, tables, final LN
    assert mp8 == (full - replicated) // 8 + replicated


def test_fp32_terms_exact_for_tiny():
    # s 64, b 4: s*b*h = 16384. Layer: 16384*(4e + 2 + 4e + 2e*F/h) + a*s^2*b*(e + e + 1), e = 4 -> 1,671,168
    par = ParallelConfig(micro_batch_size=4, seq_length=64)
    t = memory_terms(get_preset("tiny"), par, CPU)
    layer = 16384 * (16 + 2 + 16 + 32) + 4 * 64 * 64 * 4 * 9
    logits = 4 * 64 * 4 * 40000  # one fp32 [b, s, V]
    assert t == {"weights": 4 * TINY_PARAMS, "gradients": 4 * TINY_PARAMS, "optimizer": 8 * TINY_PARAMS,
                 "activations": 3 * layer + 2 * logits, "buffers": 0.0}
    assert 3 * layer + 2 * logits == 86_933_504


def test_mixed_precision_terms_exact_for_tiny():
    par = ParallelConfig(micro_batch_size=4, seq_length=64)
    hw = Hardware.from_preset(get_device_preset("ascend910"), 1)  # float16, 2 GB reserve
    t = memory_terms(get_preset("tiny"), par, hw)
    layer = 16384 * (8 + 2 + 8 + 16) + 4 * 64 * 64 * 4 * 5  # e = 2
    assert t["weights"] == 2 * TINY_PARAMS and t["gradients"] == 4 * TINY_PARAMS
    assert t["optimizer"] == 12 * TINY_PARAMS  # fp32 master + Adam m, v
    assert t["activations"] == 3 * layer + 2 * 4 * 64 * 4 * 40000
    assert t["buffers"] == 2 * GIB


def test_recompute_keeps_block_inputs_and_the_query_layer():
    par = ParallelConfig(micro_batch_size=4, seq_length=64, recompute_interval=1)
    layer = 16384 * 66 + 4 * 64 * 64 * 4 * 9
    kept = 2 * 4 * 16384 + layer  # two recomputed blocks keep their fp32 input, the query layer stays whole
    assert memory_terms(get_preset("tiny"), par, CPU)["activations"] == kept + 2 * 4 * 64 * 4 * 40000


def test_cpu_vocab_parallel_loss_and_pipeline_stage_peaks():
    tiny_mp2 = memory_terms(get_preset("tiny"), ParallelConfig(mp_degree=2, micro_batch_size=4, seq_length=64), _cpu(2))
    layer = 16384 * (18 + 48 / 2) + 4 * 64 * 64 * 4 * 9 / 2
    assert tiny_mp2["activations"] == 3 * layer + 5 * 4 * 64 * 4 * 20000  # five fp32 [b, s, V/2] copies
    par = ParallelConfig(pp_degree=2, micro_batch_size=2, accumulate_steps=4, seq_length=128)
    mini_layer = 65536 * 66 + 4 * 128 * 128 * 2 * 9  # s 128, b 2, h 256
    first = memory_terms(get_preset("mini"), par, _cpu(2), stage=0)["activations"]
    last = memory_terms(get_preset("mini"), par, _cpu(2), stage=1)["activations"]
    assert first == 2 * mini_layer + 4 * 40000 * 256  # one micro-batch left in flight + the embedding's dW
    assert last == 2 * mini_layer + 2 * 4 * 128 * 2 * 40000


def test_stage1_sharding_hands_out_whole_tensors():
    config, par = get_preset("mini"), ParallelConfig(sharding_degree=2)
    # the 40000 x 256 word embedding alone goes to rank 0, everything else to rank 1 (measured the same)
    assert sharded_parameters(config, par, 0, 0) == 10_240_000
    assert sharded_parameters(config, par, 0, 1) == 13_530_624 - 10_240_000
    assert sharded_parameters(config, ParallelConfig(sharding_degree=2, sharding_stage=2)) == 13_530_624 / 2
    dp = memory_terms(config, ParallelConfig(dp_degree=2), _cpu(2))
    assert dp["buffers"] == 4 * 13_530_624  # DataParallel's fused gradient groups


def test_step_seconds_exact():
    hw = Hardware(devices=1, peak_tflops=1.0, utilization=0.5, intra_node_gbs=10.0, dtype="float32")
    flops = 256 * (6 * TINY_PARAMS + 12 * 3 * 64 * 64)  # 4 x 64 tokens
    par = ParallelConfig(micro_batch_size=4, seq_length=64)
    assert step_seconds(get_preset("tiny"), par, hw) == pytest.approx(flops / 0.5e12, rel=1e-12)
    rc = ParallelConfig(micro_batch_size=4, seq_length=64, recompute_interval=1)
    assert step_seconds(get_preset("tiny"), rc, hw) == pytest.approx(flops / 0.5e12 * 4 / 3, rel=1e-12)
    dp2 = ParallelConfig(dp_degree=2, micro_batch_size=4, seq_length=64)
    hw2 = Hardware(devices=2, peak_tflops=1.0, utilization=0.5, intra_node_gbs=10.0, dtype="float32")
    ring = 2 * (2 - 1) / 2 * 4 * TINY_PARAMS / 10e9  # fp32 gradient all-reduce
    assert step_seconds(get_preset("tiny"), dp2, hw2) == pytest.approx(flops / 0.5e12 + ring, rel=1e-12)


def test_presets_are_complete_and_overridable():
    from paddle_pangu.errors import UsageError
    from paddle_pangu.planner.hardware import override

    assert set(PRESETS) == {"ascend910", "ascend910b", "a100-40g", "a100-80g", "h100", "cpu"}
    for p in PRESETS.values():
        assert p.memory_gb > 0 and p.peak_tflops_fp32 > 0 and p.intra_node_gbs > 0 and p.inter_node_gbs > 0
        assert p.devices_per_node >= 1 and p.source
    assert PRESETS["ascend910"].memory_gb == 32 and PRESETS["ascend910"].peak_tflops_fp16 == 256
    assert Hardware.from_preset(override(PRESETS["h100"], memory_gb=40.0), 8).memory_gb == 40.0
    assert Hardware.from_preset(PRESETS["a100-80g"], 8, "bfloat16").peak_tflops == 312
    with pytest.raises(UsageError, match="no float16"):
        Hardware.from_preset(PRESETS["cpu"], 2, "float16")
    with pytest.raises(UsageError, match="--device-preset"):
        get_device_preset("tpu")


def test_2_6b_does_not_fit_one_ascend_910():
    config = get_preset("2.6b")
    est = estimate(config, ParallelConfig(), Hardware(devices=1))
    p = config.num_parameters()
    assert est.terms_gb["optimizer"] == round(12 * p / GIB, 3) and not est.fits
    best, considered = plan(config, Hardware(devices=1), global_batch=8)
    assert best == [] and considered == 8  # micro 1/2/4/8 x recompute off/on, none fits
