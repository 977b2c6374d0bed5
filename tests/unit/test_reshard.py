"""`pangu reshard`: mp / pp layouts of this project's checkpoints, driven by the weight table."""
import os
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from paddle_pangu.config import get_preset
from paddle_pangu.convert.common import ConversionError, read_weight_files, save_model_dir
from paddle_pangu.convert.reshard import merge_to_plain, reshard
from paddle_pangu.model.weight_tables import plain_param_shapes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(vocab=321, layers=5):
    return get_preset("tiny", vocab_size=vocab, num_layers=layers, max_position_embeddings=16,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _random_dir(path, config, seed=0):
    rng = np.random.default_rng(seed)
    state = {n: (rng.standard_normal(s) * 0.1).astype(np.float32) for n, s in plain_param_shapes(config).items()}
    save_model_dir(str(path), config, {n: _Lazy(a) for n, a in state.items()})
    return state


class _Lazy:
    def __init__(self, arr):
        self.arr, self.shape = arr, arr.shape

    def load(self):
        return self.arr


def _assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_mp1_mp2_mp1_is_exact_with_vocab_padding(tmp_path):
    config = _config(vocab=321)  # odd vocabulary: padded to 322 rows for mp2
    state = _random_dir(tmp_path / "mp1", config)
    files = reshard(str(tmp_path / "mp1"), str(tmp_path / "mp2"), mp=2, pp=1)
    assert sorted(files) == ["model.tp00.safetensors", "model.tp01.safetensors"]
    r0, r1 = (load_file(str(tmp_path / "mp2" / f)) for f in sorted(files))
    q = "pangu.layers.1.attention.q_proj.weight"  # column-parallel: [in, out] split on out
    np.testing.assert_array_equal(np.concatenate([r0[q], r1[q]], axis=1), state[q])
    o = "pangu.query_layer.mlp.fc_out.weight"  # row-parallel: split on in
    np.testing.assert_array_equal(np.concatenate([r0[o], r1[o]], axis=0), state[o])
    wte = "pangu.embeddings.word_embeddings.weight"
    assert r0[wte].shape == (161, 64) and not r1[wte][-1].any()  # zero padding row at the end
    np.testing.assert_array_equal(r0["pangu.final_layernorm.bias"], r1["pangu.final_layernorm.bias"])
    reshard(str(tmp_path / "mp2"), str(tmp_path / "back"), mp=1, pp=1)
    _assert_same({k: v.load() for k, v in read_weight_files(str(tmp_path / "back")).items()}, state)


def test_mp2_pp2_stages_and_round_trip(tmp_path):
    config = _config(vocab=320, layers=5)  # 4 blocks + query layer... not divisible by pp=2
    _random_dir(tmp_path / "bad", config)
    with pytest.raises(Exception, match="pp_degree=2"):
        reshard(str(tmp_path / "bad"), str(tmp_path / "x"), mp=1, pp=2)
    config = _config(vocab=320, layers=4)  # 3 blocks + query layer: stage 0 = blocks 0,1; stage 1 = block 2 + query
    state = _random_dir(tmp_path / "mp1", config)
    reshard(str(tmp_path / "mp1"), str(tmp_path / "mp2pp2"), mp=2, pp=2)
    s0 = load_file(str(tmp_path / "mp2pp2" / "model.tp01_pp00.safetensors"))
    s1 = load_file(str(tmp_path / "mp2pp2" / "model.tp01_pp01.safetensors"))
    assert "pangu.layers.1.mlp.fc_in.bias" in s0 and "pangu.layers.2.mlp.fc_in.bias" in s1
    assert "pangu.embeddings.position_embeddings.weight" in s0 and "pangu.final_layernorm.weight" in s1
    assert "pangu.embeddings.word_embeddings.weight" in s0 and "pangu.embeddings.word_embeddings.weight" in s1  # tied
    assert not set(s0) & {n for n in s1 if "word_embeddings" not in n}
    reshard(str(tmp_path / "mp2pp2"), str(tmp_path / "pp2"), mp=1, pp=2)
    _, merged = merge_to_plain(str(tmp_path / "pp2"))
    _assert_same(merged, state)


def test_reshard_errors(tmp_path):
    config = _config(vocab=320)
    _random_dir(tmp_path / "mp1", config)
    with pytest.raises(ConversionError, match="num_attention_heads=4 is not divisible by mp=3"):
        reshard(str(tmp_path / "mp1"), str(tmp_path / "mp3"), mp=3, pp=1)
    reshard(str(tmp_path / "mp1"), str(tmp_path / "mp2"), mp=2, pp=1)
    os.remove(tmp_path / "mp2" / "model.tp01.safetensors")
    with pytest.raises(ConversionError, match=r"incomplete, missing rank files \['tp01'\]"):
        reshard(str(tmp_path / "mp2"), str(tmp_path / "y"), mp=1, pp=1)


@pytest.mark.distributed
def test_mp2_checkpoint_gives_single_process_logits(tmp_path):
    """Reshard mp1 -> mp2, run the real tensor-parallel model on 2 CPU processes from the rank files."""
    import paddle

    from paddle_pangu.model import PanGuForCausalLM

    sys.path.insert(0, os.path.join(REPO, "tests", "distributed"))
    from launch_utils import launch

    config = _config(vocab=320, layers=3)
    _random_dir(tmp_path / "mp1", config)
    reshard(str(tmp_path / "mp1"), str(tmp_path / "mp2"), mp=2, pp=1)
    ids = np.random.default_rng(0).integers(10, 320, size=(2, 12)).astype("int64")
    ids[0, 4] = config.eod_token_id
    np.save(tmp_path / "ids.npy", ids)
    model = PanGuForCausalLM.from_pretrained(str(tmp_path / "mp1"))
    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(ids)).numpy()
    run = launch(os.path.join(REPO, "tests", "distributed", "reshard_worker.py"), nproc=2,
                 args=["--ckpt", str(tmp_path / "mp2"), "--ids", str(tmp_path / "ids.npy")], timeout=300)
    outs = sorted(run.outputs(), key=lambda o: o["mp_rank"])
    got = np.concatenate([o["logits"] for o in outs], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("safe", [False, True])
def test_save_pretrained_directories_are_read(tmp_path, safe):
    """PaddleNLP's own save_pretrained output (pdparams or safetensors) reshards and merges back exactly."""
    import paddle

    from paddle_pangu.model import PanGuForCausalLM

    paddle.seed(3)
    model = PanGuForCausalLM(_config(vocab=320, layers=3))
    model.save_pretrained(str(tmp_path / "src"), safe_serialization=safe)
    reshard(str(tmp_path / "src"), str(tmp_path / "mp2"), mp=2, pp=1)
    _, merged = merge_to_plain(str(tmp_path / "mp2"))
    _assert_same(merged, {k: v.numpy() for k, v in model.state_dict().items()})


def test_pdparams_rank_files_are_read(tmp_path):
    """Per-rank `model_state.tp0R.pdparams` (PaddleNLP's name for mp checkpoints) merge like safetensors."""
    import shutil

    import paddle

    config = _config(vocab=320, layers=3)
    state = _random_dir(tmp_path / "mp1", config)
    reshard(str(tmp_path / "mp1"), str(tmp_path / "mp2"), mp=2, pp=1)
    (tmp_path / "pd").mkdir()
    shutil.copy(tmp_path / "mp2" / "config.json", tmp_path / "pd" / "config.json")
    for r in range(2):
        shard = load_file(str(tmp_path / "mp2" / f"model.tp0{r}.safetensors"))
        paddle.save({k: paddle.to_tensor(v) for k, v in shard.items()}, str(tmp_path / "pd" / f"model_state.tp0{r}.pdparams"))
    _, merged = merge_to_plain(str(tmp_path / "pd"))
    _assert_same(merged, state)


def test_wrong_shape_in_rank_file_is_reported(tmp_path):
    from safetensors.numpy import save_file

    config = _config(vocab=320, layers=3)
    _random_dir(tmp_path / "mp1", config)
    reshard(str(tmp_path / "mp1"), str(tmp_path / "mp2"), mp=2, pp=1)
    path = str(tmp_path / "mp2" / "model.tp01.safetensors")
    shard = load_file(path)
    shard["pangu.layers.0.mlp.fc_in.weight"] = shard["pangu.layers.0.mlp.fc_in.weight"][:, :-1].copy()
    save_file(shard, path)
    os.remove(tmp_path / "mp2" / "MANIFEST.json")  # a hand-edited directory: the shape check, not the hashes
    with pytest.raises(ConversionError, match=r"tp01 pp00.*pangu\.layers\.0\.mlp\.fc_in\.weight: \(64, 127\) != \(64, 128\)"):
        reshard(str(tmp_path / "mp2"), str(tmp_path / "back"), mp=1, pp=1)


def test_plain_param_shapes_match_the_model():
    """The table every converter checks against is exactly PanGuForCausalLM's state dict (names, order, shapes)."""
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.model.weight_tables import plain_parameter_names

    config = _config(vocab=100, layers=3)
    state = PanGuForCausalLM(config).state_dict()
    assert list(state) == plain_parameter_names(config)
    assert {k: tuple(v.shape) for k, v in state.items()} == plain_param_shapes(config)


def test_paddlenlp_tensor_parallel_mappings_follow_the_table():
    """The PaddleNLP from_pretrained hook is generated from the same table as split_state_dict."""
    import paddle

    from paddle_pangu.config import get_preset
    from paddle_pangu.model import PanGuForCausalLM
    from paddle_pangu.model.weight_tables import merge_state_dicts, split_state_dict

    config = get_preset("tiny")
    paddle.seed(0)
    plain = {k: v.numpy() for k, v in PanGuForCausalLM(config).state_dict().items()}
    shards = []
    for rank in range(2):
        config.tensor_parallel_degree, config.tensor_parallel_rank = 2, rank
        maps = PanGuForCausalLM._get_tensor_parallel_mappings(config, is_split=True)
        ours = split_state_dict(plain, 2, rank)
        assert set(maps) == {k for k in plain if ours[k].shape != plain[k].shape}
        for name, value in plain.items():
            got = maps[name](value) if name in maps else value
            np.testing.assert_array_equal(got, ours[name], err_msg=name)
        shards.append(ours)
    merge = PanGuForCausalLM._get_tensor_parallel_mappings(config, is_split=False)
    merged = merge_state_dicts(shards)
    for name, fn in merge.items():
        np.testing.assert_array_equal(fn([s[name] for s in shards]), merged[name], err_msg=name)
