"""Run YAML -> RunConfig: parsing, overrides, and errors that name the field."""
import textwrap

import pytest

from paddle_pangu.training.run_config import RunConfigError, check_data_paths, load_run_config, run_config_from_dict

BASE = {
    "model": {"preset": "tiny", "overrides": {"hidden_dropout_prob": 0.0}},
    "data": {"seq_len": 32, "synthetic": {"num_samples": 16}},
    "parallel": {"micro_batch_size": 2, "accumulate_steps": 2},
    "train": {"max_steps": 5},
}


def _cfg(**sections):
    data = {k: dict(v) for k, v in BASE.items()}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return run_config_from_dict(data, source="x.yaml")


def test_yaml_roundtrip_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent("""
        model: {preset: tiny}
        data: {seq_len: 64, synthetic: {num_samples: 8}}
        optim: {lr: 3.0e-4, warmup_steps: 10}
        parallel: {mp_degree: 2, micro_batch_size: 4}
        train: {max_steps: 100}
    """))
    cfg = load_run_config(str(path), ["optim.lr=1e-3", "train.max_steps=7", "parallel.accumulate_steps=3"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.train.max_steps == 7
    assert cfg.seq_len == 64
    model_cfg, par = cfg.validate(world_size=2)
    assert model_cfg.hidden_size == 64 and par.mp_degree == 2 and par.accumulate_steps == 3
    assert par.global_batch_size == 4 * 3  # mp does not multiply the batch


def test_seq_len_defaults_to_model_positions():
    cfg = run_config_from_dict({**BASE, "data": {"synthetic": {"num_samples": 4}}})
    assert cfg.seq_len == cfg.model_config().max_position_embeddings


@pytest.mark.parametrize("section,value,field", [
    ("optim", {"decay_style": "step"}, "optim.decay_style"),
    ("optim", {"min_lr": 1.0, "lr": 0.1}, "optim.min_lr"),
    ("amp", {"dtype": "fp8"}, "amp.dtype"),
    ("train", {"device": "tpu"}, "train.device"),
    ("data", {"seq_len": 4096}, "data.seq_len"),
])
def test_bad_values_name_the_field(section, value, field):
    with pytest.raises(RunConfigError, match=field.replace(".", r"\.")):
        _cfg(**{section: value}).validate()


def test_unknown_and_mistyped_fields_are_named():
    with pytest.raises(RunConfigError, match=r"optim: unknown field\(s\) \['learning_rate'\]"):
        run_config_from_dict({**BASE, "optim": {"learning_rate": 1}}, source="x.yaml")
    with pytest.raises(RunConfigError, match=r"train\.max_steps='many': expected a number"):
        run_config_from_dict({**BASE, "train": {"max_steps": "many"}}, source="x.yaml")
    with pytest.raises(RunConfigError, match=r"x\.yaml: .*model\.preset/overrides"):
        _cfg(model={"preset": "huge"}).validate()


def test_data_needs_paths_or_synthetic_and_matching_weights():
    with pytest.raises(RunConfigError, match="data.paths is empty"):
        run_config_from_dict({**BASE, "data": {"seq_len": 32}}).validate()
    with pytest.raises(RunConfigError, match="data.weights has 1 entries for 2 data.paths"):
        run_config_from_dict({**BASE, "data": {"paths": ["a", "b"], "weights": [1.0]}}).validate()


@pytest.mark.parametrize("parallel,world,message", [
    ({"mp_degree": 2}, 4, "world_size=4"),
    ({"mp_degree": 3}, 3, "not divisible by ParallelConfig.mp_degree=3"),
    ({"pp_degree": 2}, 2, "cannot be split evenly"),  # tiny has 3 layers incl. the query layer
    ({"sharding_stage": 3}, 1, "sharding_stage"),
    ({"micro_batch_size": 0}, 1, "micro_batch_size"),
    ({"mp_degree": "two"}, 2, r"parallel\.mp_degree='two': expected a number"),
    ({"tensor_degree": 2}, 2, "unknown field"),
])
def test_bad_layouts_rejected_before_any_process_group(parallel, world, message):
    with pytest.raises(RunConfigError, match=message):
        _cfg(parallel=parallel).validate(world_size=world)


def test_parallel_is_typed_once_and_the_run_has_one_seed_and_one_sequence_length():
    from paddle_pangu.config.parallel_config import ParallelConfig

    cfg = _cfg(train={"seed": 77}, data={"seq_len": 48})
    assert isinstance(cfg.parallel, ParallelConfig) and cfg.parallel.accumulate_steps == 2
    model_cfg, par = cfg.validate(world_size=1)
    assert (par.seed, par.seq_length, par.global_batch_size) == (77, 48, 4)  # the validated pair carries them
    assert model_cfg.max_position_embeddings == 128
    for field, home in (("seed", "train.seed"), ("seq_length", "data.seq_len")):
        with pytest.raises(RunConfigError, match=rf"x\.yaml: parallel\.{field}=.*is {home}"):
            _cfg(parallel={field: 64})
    # the saved form loads back to the same run (no duplicate seed / sequence length in it)
    from paddle_pangu.training.run_config import to_dict

    again = run_config_from_dict(to_dict(cfg), source="saved")
    assert again.validate(world_size=1)[1] == par


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RunConfigError, match="not found"):
        load_run_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(RunConfigError, match="not valid YAML"):
        load_run_config(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("model: {preset: tiny}")
    with pytest.raises(RunConfigError, match="KEY.PATH=VALUE"):
        load_run_config(str(good), ["nokey"])


def test_missing_prepared_dataset_is_named(tmp_path):
    cfg = run_config_from_dict({**BASE, "data": {"paths": [str(tmp_path / "nope")], "seq_len": 32}}, source="x.yaml")
    with pytest.raises(RunConfigError, match=r"data\.paths\[0\]=.*nope.*pangu prepare-data"):
        check_data_paths(cfg)
    (tmp_path / "ok").mkdir()
    check_data_paths(run_config_from_dict({**BASE, "data": {"paths": [str(tmp_path / "ok")]}}))
