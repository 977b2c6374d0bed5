"""The planner on the paper's clusters (REF "Parallelism used"), its rejection reasons, and the run
configs it writes (read back through the run-config loader)."""
import pytest
import yaml

from paddle_pangu.config import get_preset
from paddle_pangu.planner import Hardware, consider
from paddle_pangu.planner.estimate import GIB
from paddle_pangu.planner.hardware import get_device_preset
from paddle_pangu.planner.search import find, layout_grid
from paddle_pangu.training.run_config import load_run_config

PAPER = dict(mp_degree=8, pp_degree=16, dp_degree=1, sharding_degree=16, sharding_stage=1, micro_batch_size=1,
             recompute_interval=1)


def _ascend(devices):
    return Hardware.from_preset(get_device_preset("ascend910"), devices)


@pytest.fixture(scope="module")
def plan_200b():
    return consider(get_preset("200b"), _ascend(2048), 1536)


def test_200b_pure_data_parallel_is_out_of_memory():
    config = get_preset("200b")
    cands = consider(config, _ascend(2048), 2048)  # a batch that splits over 2048 replicas
    dp = find(cands, mp_degree=1, pp_degree=1, sharding_degree=1, micro_batch_size=1, recompute_interval=1)
    p = config.num_parameters()
    assert dp.estimate.terms_gb["weights"] == round(2 * p / GIB, 3)
    assert dp.estimate.terms_gb["optimizer"] == round(12 * p / GIB, 3)  # master + Adam, unsharded
    assert dp.estimate.terms_gb["buffers"] == round(4 * p / GIB + 2, 3)  # fused fp32 gradient groups + reserve
    over = dp.estimate.memory_gb - 32
    assert dp.reason.startswith(f"out of memory by {over:.2f} GB (needs {dp.estimate.memory_gb:.2f} of 32 GB): "
                                f"optimizer states {12 * p / GIB:.2f}")


def test_200b_pure_dp_at_the_paper_batch_names_both_failures(plan_200b):
    dp = find(plan_200b, mp_degree=1, pp_degree=1, sharding_degree=1, micro_batch_size=1, recompute_interval=0)
    assert "global_batch_size=1536 is not a multiple of" in dp.reason and "= 2048" in dp.reason
    assert "; and out of memory by" in dp.reason


def test_200b_paper_layout_fits_and_ranks_near_the_top(plan_200b):
    paper = find(plan_200b, **PAPER)
    fitting = sorted((c for c in plan_200b if c.fits), key=lambda c: c.rank)
    assert paper.fits and paper.estimate.memory_gb < 32
    assert paper.rank <= 0.2 * len(fitting)
    faster = fitting[: paper.rank - 1]
    # every layout ranked above it either skips recompute or uses mp < 8, or is the same shape at stage 2
    assert all(c.degrees["recompute_interval"] == 0 or c.degrees["mp_degree"] < 8
               or {**c.degrees, "sharding_stage": 1} == PAPER for c in faster)


def test_rejections_name_the_failing_check():
    config = get_preset("tiny")  # 4 heads, 3 layers
    hw = _ascend(8)
    cands = consider(config, hw, 8)
    assert len(cands) == len(list(layout_grid(config, hw)))
    assert all(c.fits or c.reason for c in cands)
    mp8 = find(cands, mp_degree=8)
    assert "num_attention_heads=4 is not divisible by ParallelConfig.mp_degree=8" in mp8.reason
    pp2 = find(cands, mp_degree=1, pp_degree=2)
    assert "num_layers=3" in pp2.reason and "pp_degree=2" in pp2.reason
    assert find(cands, mp_degree=1, pp_degree=1, dp_degree=8, micro_batch_size=1).fits


@pytest.mark.parametrize("name, devices", [("2.6b", 512), ("13b", 1024)])
def test_paper_mp8_with_sharding_fits(name, devices):
    # device counts of the paper's training runs; 2.6B/13B used mp 8 + optimizer sharding + recompute, no pipeline
    cands = consider(get_preset(name), _ascend(devices), devices)
    for stage in (1, 2):
        mp8 = find(cands, mp_degree=8, pp_degree=1, dp_degree=1, sharding_stage=stage, micro_batch_size=1,
                   recompute_interval=1)
        assert mp8.fits, mp8.reason
    dp = find(cands, mp_degree=1, pp_degree=1, sharding_degree=1, micro_batch_size=1, recompute_interval=1)
    assert dp.reason.startswith("out of memory by")


def test_write_config_of_the_200b_plan_validates(tmp_path, capsys):
    from paddle_pangu.cli import main

    out = tmp_path / "plan200b.yaml"
    code = main(["plan", "--preset", "200b", "--devices", "2048", "--device-preset", "ascend910",
                 "--global-batch", "1536", "--top", "3", "--write-config", str(out)])
    assert code == 0 and "validated for world size 2048" in capsys.readouterr().out
    written = yaml.safe_load(out.read_text())
    cfg = load_run_config(str(out))
    _, par = cfg.validate(2048)
    assert par.world_size == 2048 and written["train"]["device"] == "npu" and written["amp"]["dtype"] == "float16"
    assert par.global_batch_size == 1536
    with pytest.raises(Exception, match="world_size"):
        cfg.validate(1024)


def test_explain_lists_every_layout(capsys):
    from paddle_pangu.cli import main

    assert main(["plan", "--preset", "tiny", "--devices", "2", "--device-preset", "cpu", "--global-batch", "8",
                 "--seq-length", "64", "--explain"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[1:]
    hw = Hardware.from_preset(get_device_preset("cpu"), 2)
    assert len(lines) == len(list(layout_grid(get_preset("tiny"), hw, allow_stage2=False)))
    assert any("ok #1:" in line for line in lines)
    assert any("rejected: invalid: PanGuConfig.num_layers=3" in line for line in lines)
