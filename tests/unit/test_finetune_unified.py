"""finetune/unified.py: one process loads a PaddleNLP unified checkpoint written in several files
(as 2 processes write it), and refuses what it must not load. The 2-process save / resume runs are in
tests/distributed/test_finetune_nproc.py and test_finetune_parallel.py."""
import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from paddle_pangu.errors import CheckpointError


@pytest.fixture(scope="module")
def model():
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(1)
    return PanGuForCausalLM(get_preset("tiny", num_layers=2))


def write_unified(path, tensors: dict, n_files: int = 2) -> dict:
    """PaddleNLP's layout: model-0000k-of-0000n.safetensors + model.safetensors.index.json."""
    path.mkdir(exist_ok=True)
    names = list(tensors)
    weight_map = {}
    for k in range(n_files):
        file = f"model-{k + 1:05d}-of-{n_files:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::n_files]}
        save_file(part, str(path / file))
        weight_map.update({n: file for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return weight_map


def perturbed(model):
    """Every weight of `model` + 1 (so a tensor left at the model's own value is seen)."""
    return {k: v.numpy() + np.float32(1.0) for k, v in model.state_dict().items()}


def test_every_file_of_a_two_file_checkpoint_reaches_the_model(model, tmp_path):
    from paddle_pangu.finetune.unified import load_model_one_process

    target = perturbed(model)
    weight_map = write_unified(tmp_path / "ckpt", target)
    assert len(set(weight_map.values())) == 2
    load_model_one_process(model, str(tmp_path / "ckpt"))
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), target[name], err_msg=name)


@pytest.mark.parametrize("fault", ["nan", "missing_param", "shape", "absent_file", "absent_key"])
def test_a_damaged_unified_checkpoint_is_refused_naming_what(model, tmp_path, fault):
    from paddle_pangu.finetune.unified import load_model_one_process

    tensors = perturbed(model)
    victim = "pangu.layers.0.attention.q_proj.weight"
    if fault == "nan":
        tensors[victim][0, 0] = np.nan
    elif fault == "missing_param":
        del tensors[victim]
    elif fault == "shape":
        tensors[victim] = tensors[victim][:, :8].copy()
    weight_map = write_unified(tmp_path / "ckpt", tensors)
    index = tmp_path / "ckpt" / "model.safetensors.index.json"
    if fault == "absent_file":
        (tmp_path / "ckpt" / weight_map[victim]).unlink()
    elif fault == "absent_key":  # the index says a file holds a tensor it does not
        other = next(f for f in set(weight_map.values()) if f != weight_map[victim])
        index.write_text(json.dumps({"weight_map": {**weight_map, victim: other}}))
    before = model.state_dict()[victim].numpy().copy()
    with pytest.raises(CheckpointError) as err:
        load_model_one_process(model, str(tmp_path / "ckpt"))
    message = str(err.value)
    expected = {"nan": [victim, "non-finite"], "missing_param": [victim, "missing"], "shape": [victim, "[64, 8]"],
                "absent_file": [weight_map.get(victim), "not in"], "absent_key": [victim, "does not hold"]}[fault]
    assert all(part in message for part in expected), message
    np.testing.assert_array_equal(model.state_dict()[victim].numpy(), before)  # nothing half-loaded
