"""`pangu` with the AdamW moments zeroed while a checkpoint is resharded (the mutation check of
test_reshard_resume.py): the conversion runs as usual, then every `_moment1_0` / `_moment2_0`
tensor it produced is replaced by zeros before it reaches the optimizer.

    python tests/distributed/reshard_zero_moments.py train --config X.yaml --reshard ...
"""
import sys

import numpy as np

from paddle_pangu.training.checkpoint import reshard

_convert = reshard.convert_rank_state


def _zeroed(*args, **kwargs):
    weights, moments, masters = _convert(*args, **kwargs)
    zeroed = {k: np.zeros_like(v) if "_moment" in k else v for k, v in moments.items()}
    assert any("_moment" in k for k in moments), "no moments were converted: the mutation would test nothing"
    return weights, zeroed, masters


reshard.convert_rank_state = _zeroed

if __name__ == "__main__":
    from paddle_pangu.cli import main

    sys.exit(main(sys.argv[1:]))
