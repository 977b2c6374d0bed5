"""PanGuConfig: the shape-only description of a PanGu-alpha model.

Everything here describes the network; nothing here describes how it is
parallelised (that is `paddle_pangu.config.parallel_config.ParallelConfig`)
or trained. Facts cite docs/REFERENCE.md ("REF").
"""
from __future__ import annotations

from paddlenlp.transformers.configuration_utils import PretrainedConfig

from ..errors import ConfigError

ACTIVATIONS = ("gelu_tanh", "gelu", "fast_gelu")


class PanGuConfig(PretrainedConfig):
    """Shape and behaviour of a PanGu-alpha network.

    Args:
        vocab_size: rows of the (tied) word embedding. REF: 40000.
        hidden_size: model width H.
        num_layers: transformer blocks *including* the top query layer
            (REF "layer count": 2.6B = 31 blocks + 1 query layer).
        num_attention_heads: attention heads; must divide hidden_size.
        ffn_hidden_size: width of the FFN `mapping` layer (REF: 4H).
        max_position_embeddings: rows of the position and top-query tables
            (the sequence length, REF: 1024).
        hidden_act: `gelu_tanh` (released checkpoints, default), `gelu`
            (exact erf, HF port) or `fast_gelu` (x*sigmoid(1.702x)).
        hidden_dropout_prob: dropout after embeddings and on each residual
            branch (REF 0.1).
        attention_probs_dropout_prob: dropout on attention probabilities.
        layer_norm_eps: REF 1e-5 (computed in fp32).
        initializer_range: std of the N(0, std) init (REF 0.02).
        eod_token_id: separator appended after each document (REF: 9 `<eot>`).
        eod_reset: restart position ids and make the causal mask
            block-diagonal after each `eod_token_id` (REF "document boundaries").
        pad_token_id: padding id, masked out of the loss (REF 6).
        eos_token_id: generation stops here (REF 9).
    """

    model_type = "pangu_alpha"
    attribute_map = {"num_hidden_layers": "num_layers", "n_head": "num_attention_heads"}

    def __init__(
        self,
        vocab_size: int = 40000,
        hidden_size: int = 2560,
        num_layers: int = 32,
        num_attention_heads: int = 32,
        ffn_hidden_size: int | None = None,
        max_position_embeddings: int = 1024,
        hidden_act: str = "gelu_tanh",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        layer_norm_eps: float = 1e-5,
        initializer_range: float = 0.02,
        eod_token_id: int = 9,
        eod_reset: bool = True,
        pad_token_id: int = 6,
        bos_token_id: int = 9,
        eos_token_id: int = 9,
        **kwargs,
    ):
        kwargs.setdefault("tie_word_embeddings", True)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.num_attention_heads = int(num_attention_heads)
        self.ffn_hidden_size = int(ffn_hidden_size) if ffn_hidden_size else 4 * self.hidden_size
        self.max_position_embeddings = int(max_position_embeddings)
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.attention_probs_dropout_prob = float(attention_probs_dropout_prob)
        self.layer_norm_eps = float(layer_norm_eps)
        self.initializer_range = float(initializer_range)
        self.eod_token_id = int(eod_token_id)
        self.eod_reset = bool(eod_reset)
        self.validate()

    # ---- derived fields (computed, never stored in config.json) ----------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_blocks(self) -> int:
        """Ordinary blocks below the query layer (REF: num_layers - 1)."""
        return self.num_layers - 1

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field when the shape is impossible."""
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"PanGuConfig.hidden_act={self.hidden_act!r}: expected one of {ACTIVATIONS}")
        if self.num_layers < 1:
            raise ConfigError(f"PanGuConfig.num_layers={self.num_layers}: need >= 1 (the query layer counts)")
        if self.num_attention_heads < 1:
            raise ConfigError(f"PanGuConfig.num_attention_heads={self.num_attention_heads}: must be positive")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"PanGuConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        for name in ("vocab_size", "hidden_size", "ffn_hidden_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"PanGuConfig.{name}={getattr(self, name)}: must be positive")

    def num_parameters(self) -> int:
        """Closed-form parameter count (tied head: no extra LM-head matrix)."""
        h, f, s, v, n = self.hidden_size, self.ffn_hidden_size, self.max_position_embeddings, self.vocab_size, self.num_layers
        embeddings = v * h + s * h + s * h  # word + position + top_query (REF "embeddings", "query layer")
        block = 2 * 2 * h + 4 * (h * h + h) + (h * f + f) + (f * h + h)  # 2 LN, Q/K/V/out, mapping, projection
        return embeddings + n * block + 2 * h  # + final LN
