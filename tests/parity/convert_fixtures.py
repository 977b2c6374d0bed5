"""Foreign-format fixtures for the converter tests, written by hand from REF.

Each writer lays out the reference parameters (tests/parity/reference_numpy.py,
torch convention W [out, in]) the way that format really stores them. They do
NOT use paddle_pangu's weight tables, so a wrong name or transpose in a table
shows up as a logits mismatch instead of cancelling out.
"""
from __future__ import annotations

import numpy as np

from reference_numpy import init_params

# tiny shapes: 2 blocks + query layer
SHAPE = dict(vocab=320, hidden=32, num_layers=3, ffn=128, seq=16)
HEADS = 4


def make_params(seed: int = 0, dtype=np.float32) -> dict:
    return init_params(SHAPE["vocab"], SHAPE["hidden"], SHAPE["num_layers"], SHAPE["ffn"], SHAPE["seq"], seed, dtype)


def config_overrides(hidden_act: str = "gelu_tanh") -> dict:
    return dict(vocab_size=SHAPE["vocab"], hidden_size=SHAPE["hidden"], num_layers=SHAPE["num_layers"],
                num_attention_heads=HEADS, ffn_hidden_size=SHAPE["ffn"], max_position_embeddings=SHAPE["seq"],
                hidden_act=hidden_act, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def to_mindspore(p: dict) -> dict:
    """Released MindSpore names; dense1/2/3 [out, in], projection / mapping [in, out] (REF)."""
    out = {"backbone.word_embedding.embedding_table": p["wte"],
           "backbone.position_embedding.embedding_table": p["wpe"],
           "backbone.top_query_embedding.embedding_table": p["wqe"],
           "backbone.layernorm.gamma": p["ln_f_g"], "backbone.layernorm.beta": p["ln_f_b"]}

    def layer(prefix, q):
        out.update({
            prefix + "layernorm1.gamma": q["ln1_g"], prefix + "layernorm1.beta": q["ln1_b"],
            prefix + "attention.dense1.weight": q["wq"], prefix + "attention.dense1.bias": q["bq"],
            prefix + "attention.dense2.weight": q["wk"], prefix + "attention.dense2.bias": q["bk"],
            prefix + "attention.dense3.weight": q["wv"], prefix + "attention.dense3.bias": q["bv"],
            prefix + "attention.projection.weight": q["wo"].T.copy(), prefix + "attention.projection.bias": q["bo"],
            prefix + "layernorm2.gamma": q["ln2_g"], prefix + "layernorm2.beta": q["ln2_b"],
            prefix + "output.mapping.weight": q["w_in"].T.copy(), prefix + "output.mapping.bias": q["b_in"],
            prefix + "output.projection.weight": q["w_out"].T.copy(), prefix + "output.projection.bias": q["b_out"],
        })

    for i, q in enumerate(p["blocks"]):
        layer(f"backbone.blocks.{i}.", q)
    layer("backbone.top_query_layer.", p["query"])
    return out


PADDLE_LAYER = {"ln1_g": "input_layernorm.weight", "ln1_b": "input_layernorm.bias",
                "wq": "attention.q_proj.weight", "bq": "attention.q_proj.bias",
                "wk": "attention.k_proj.weight", "bk": "attention.k_proj.bias",
                "wv": "attention.v_proj.weight", "bv": "attention.v_proj.bias",
                "wo": "attention.out_proj.weight", "bo": "attention.out_proj.bias",
                "ln2_g": "post_attention_layernorm.weight", "ln2_b": "post_attention_layernorm.bias",
                "w_in": "mlp.fc_in.weight", "b_in": "mlp.fc_in.bias", "w_out": "mlp.fc_out.weight", "b_out": "mlp.fc_out.bias"}


def to_paddle(p: dict) -> dict:
    """PanGuForCausalLM state dict (contract names; Paddle Linear [in, out] = reference W.T) for model tests."""
    out = {"pangu.embeddings.word_embeddings.weight": p["wte"], "pangu.embeddings.position_embeddings.weight": p["wpe"],
           "pangu.query_layer.top_query_embedding.weight": p["wqe"],
           "pangu.final_layernorm.weight": p["ln_f_g"], "pangu.final_layernorm.bias": p["ln_f_b"]}

    def layer(prefix, q):
        for k, n in PADDLE_LAYER.items():
            out[prefix + n] = np.ascontiguousarray(q[k].T) if q[k].ndim == 2 else q[k]

    for i, q in enumerate(p["blocks"]):
        layer(f"pangu.layers.{i}.", q)
    layer("pangu.query_layer.", p["query"])
    return out


MEGATRON_LAYER = {"ln1_g": "input_layernorm.weight", "ln1_b": "input_layernorm.bias",
                  "wq": "attention.query.weight", "bq": "attention.query.bias",
                  "wk": "attention.key.weight", "bk": "attention.key.bias",
                  "wv": "attention.value.weight", "bv": "attention.value.bias",
                  "wo": "attention.dense.weight", "bo": "attention.dense.bias",
                  "ln2_g": "post_attention_layernorm.weight", "ln2_b": "post_attention_layernorm.bias",
                  "w_in": "mlp.dense_h_to_4h.weight", "b_in": "mlp.dense_h_to_4h.bias",
                  "w_out": "mlp.dense_4h_to_h.weight", "b_out": "mlp.dense_4h_to_h.bias"}
# Megatron column-parallel (split output rows) and row-parallel (split input columns) tensors
MEGATRON_COLUMN = ("wq", "bq", "wk", "bk", "wv", "bv", "w_in", "b_in")
MEGATRON_ROW = ("wo", "w_out")


def to_megatron(p: dict, mp: int = 1, padded_vocab: int | None = None) -> list[dict]:
    """Per-rank `{"model": {"language_model": ...}}` dicts of numpy arrays (torch Linear [out, in])."""
    wte = p["wte"]
    if padded_vocab:
        wte = np.concatenate([wte, np.zeros((padded_vocab - wte.shape[0], wte.shape[1]), wte.dtype)])
    ranks = []
    for r in range(mp):
        def part(key, arr):
            if key in MEGATRON_COLUMN:
                return np.split(arr, mp, axis=0)[r]
            if key in MEGATRON_ROW:
                return np.split(arr, mp, axis=1)[r]
            return arr

        transformer = {}
        for i, q in enumerate(p["blocks"]):
            transformer.update({f"layers.{i}.{n}": part(k, q[k]) for k, n in MEGATRON_LAYER.items()})
        transformer.update({f"topQueryLayer.{n}": part(k, p["query"][k]) for k, n in MEGATRON_LAYER.items()})
        transformer.update({"final_layernorm.weight": p["ln_f_g"], "final_layernorm.bias": p["ln_f_b"]})
        lm = {"embedding": {"word_embeddings": {"weight": np.split(wte, mp, axis=0)[r]},
                            "position_embeddings": {"weight": p["wpe"]}},
              "topQueryEmbedding": {"top_query_embeddings": {"weight": p["wqe"]}},
              "transformer": transformer}
        ranks.append({"model": {"language_model": lm}, "iteration": 0})
    return ranks


HF_LAYER = {"ln1_g": "ln_1.weight", "ln1_b": "ln_1.bias", "wq": "attn.q_proj.weight", "bq": "attn.q_proj.bias",
            "wk": "attn.k_proj.weight", "bk": "attn.k_proj.bias", "wv": "attn.v_proj.weight", "bv": "attn.v_proj.bias",
            "wo": "attn.c_proj.weight", "bo": "attn.c_proj.bias", "ln2_g": "ln_2.weight", "ln2_b": "ln_2.bias",
            "w_in": "mlp.c_fc.weight", "b_in": "mlp.c_fc.bias", "w_out": "mlp.c_proj.weight", "b_out": "mlp.c_proj.bias"}


def to_hf(p: dict) -> dict:
    """gpt_pangu state dict: h.{L-1} is the query layer; lm_head is a copy of wte; attn.bias mask buffers."""
    out = {"transformer.wte.weight": p["wte"], "transformer.wpe.weight": p["wpe"], "transformer.wqe.weight": p["wqe"],
           "transformer.ln_f.weight": p["ln_f_g"], "transformer.ln_f.bias": p["ln_f_b"], "lm_head.weight": p["wte"].copy()}
    layers = list(p["blocks"]) + [p["query"]]
    seq = p["wpe"].shape[0]
    for i, q in enumerate(layers):
        out.update({f"transformer.h.{i}.{n}": q[k] for k, n in HF_LAYER.items()})
        out[f"transformer.h.{i}.attn.bias"] = np.tril(np.ones((seq, seq), np.uint8)).reshape(1, 1, seq, seq)
    return out


def hf_config(p: dict, activation: str = "gelu") -> dict:
    return {"model_type": "gpt_pangu", "vocab_size": SHAPE["vocab"], "hidden_size": SHAPE["hidden"],
            "num_layers": SHAPE["num_layers"], "num_heads": HEADS, "intermediate_size": SHAPE["ffn"],
            "max_position_embeddings": SHAPE["seq"], "activation_function": activation, "layer_norm_epsilon": 1e-5}


def paddle_logits(model_dir: str, input_ids: np.ndarray) -> np.ndarray:
    """Logits of the converted directory through the real `PanGuForCausalLM.from_pretrained`."""
    import paddle

    from paddle_pangu.model import PanGuForCausalLM

    model = PanGuForCausalLM.from_pretrained(model_dir, dtype="float32")
    model.eval()
    with paddle.no_grad():
        logits = model(paddle.to_tensor(input_ids, dtype="int64"))
    return logits.numpy().astype(np.float64)


def sample_ids(seed: int = 1, batch: int = 2, length: int = 12) -> np.ndarray:
    return np.random.default_rng(seed).integers(10, SHAPE["vocab"], size=(batch, length))


ST_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def rounded(arr: np.ndarray, dtype: str) -> np.ndarray:
    """`arr` as stored in `dtype`, widened to float32: numpy's float16 cast, Paddle's bfloat16 cast (round to
    nearest even), independent of the converter's own bfloat16 writer."""
    arr = np.asarray(arr, np.float32)
    if dtype == "float16":
        return arr.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":
        import paddle

        return paddle.to_tensor(arr).astype("bfloat16").astype("float32").numpy()
    return arr


def safetensors_dtypes(directory) -> dict[str, str]:
    """{tensor name: safetensors dtype} from the headers of every .safetensors file in `directory`."""
    import json
    from pathlib import Path

    out = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        out.update({k: v["dtype"] for k, v in header.items() if k != "__metadata__"})
    return out


def assert_reads_back(model_dir, params: dict, dtype: str, source_dtype=np.float32) -> None:
    """A converted directory read back as a user does, every tensor by name: the files store `dtype`, the
    loader (`PanGuForCausalLM.from_pretrained`) builds parameters of that dtype, and each value is the
    reference tensor (as the source stored it) rounded to `dtype`: exact, a cast is one rounding."""
    import paddle

    from paddle_pangu.model import PanGuForCausalLM

    expected = {k: rounded(np.asarray(v, source_dtype), dtype) for k, v in to_paddle(params).items()}
    stored = safetensors_dtypes(model_dir)
    assert stored == {k: ST_DTYPE[dtype] for k in expected}, stored
    model = PanGuForCausalLM.from_pretrained(str(model_dir))
    state = model.state_dict()
    assert set(expected) <= set(state), sorted(set(expected) - set(state))
    for name, want in expected.items():
        got = state[name]
        assert got.dtype == getattr(paddle, dtype), (name, got.dtype)
        np.testing.assert_array_equal(got.astype("float32").numpy(), want, err_msg=name)
