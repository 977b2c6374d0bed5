"""Every YAML under configs/ loads and is valid.

* configs/pretrain/*.yaml: a RunConfig whose layout validates against the
  `world_size` it declares (before any process group, as at launch), whose
  AMP mode is allowed on its device, and whose batch arithmetic is whole.
* configs/data/*.yaml: a prepare-data PipelineConfig through the same typed loader.
* anything else: parses to a non-empty mapping.
"""
from pathlib import Path

import pytest
import yaml

from paddle_pangu.training.amp import plan_amp
from paddle_pangu.training.run_config import load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ALL_YAML = sorted(CONFIGS.rglob("*.yaml"))
PRETRAIN = [p for p in ALL_YAML if p.parent.name == "pretrain"]
DATA = [p for p in ALL_YAML if p.parent.name == "data"]


def _id(path):
    return str(path.relative_to(CONFIGS))


def test_configs_exist():
    names = {p.stem for p in PRETRAIN}
    for size in ("350m", "2.6b", "13b", "200b"):
        assert any(n.startswith(size) for n in names), f"no configs/pretrain/{size}*.yaml"
    assert "mini_cpu_mp2" in names  # the main job (tools/main_job.sh)


@pytest.mark.parametrize("path", ALL_YAML, ids=_id)
def test_every_yaml_parses(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and data, f"{path}: expected a non-empty mapping"


@pytest.mark.parametrize("path", PRETRAIN, ids=_id)
def test_pretrain_config_validates_for_its_world_size(path):
    cfg = load_run_config(str(path))
    assert cfg.world_size, f"{path}: declare world_size (the process count it is launched with)"
    model_cfg, par = cfg.validate(world_size=cfg.world_size)
    assert par.world_size == cfg.world_size
    assert cfg.seq_len <= model_cfg.max_position_embeddings
    device = "gpu" if cfg.train.device == "auto" else cfg.train.device
    plan_amp(cfg.amp, device)  # raises if the AMP mode cannot run on that device
    with pytest.raises(Exception, match="world_size"):
        cfg.validate(world_size=cfg.world_size * 2)


def test_paper_layouts():
    """REF "Parallelism used": 2.6B/13B mp 8 + optimizer sharding + recompute, no pipeline;
    200B pp 16 x mp 8 x dp 16 with sharding and recompute per layer, 4 layers per stage."""
    for size in ("2.6b", "13b"):
        (path,) = [p for p in PRETRAIN if p.stem.startswith(size)]
        _, par = load_run_config(str(path)).validate()
        assert (par.mp_degree, par.pp_degree, par.recompute_interval) == (8, 1, 1)
        assert par.sharding_degree > 1
    (path,) = [p for p in PRETRAIN if p.stem.startswith("200b")]
    cfg = load_run_config(str(path))
    model_cfg, par = cfg.validate()
    assert (par.pp_degree, par.mp_degree, par.data_parallel_size, par.recompute_interval) == (16, 8, 16, 1)
    assert par.sharding_degree > 1 and par.world_size == 2048
    assert model_cfg.num_layers // par.pp_degree == 4


@pytest.mark.parametrize("path", DATA, ids=_id)
def test_data_config_loads_through_the_typed_loader(path):
    from paddle_pangu.cli.prepare_data import load_config_file

    cfg = load_config_file(path)
    assert cfg.stages[-1] == "tokenize" and isinstance(cfg.split, tuple)
