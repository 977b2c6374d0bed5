"""Per-rank inputs of npu_collective_worker.py, shared with the test that computes the expected results."""
import numpy as np

DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "int8", "uint8", "bool")
N = 4099  # odd, not a multiple of any vector width


def rank_input(dtype: str, rank: int) -> np.ndarray:
    """Values whose sums are not exact in the low-precision types (they round), with ties and signs."""
    rng = np.random.default_rng(1000 + rank)
    if dtype in ("float32", "float64", "float16", "bfloat16"):
        x = rng.standard_normal(N) * np.exp2(rng.integers(-8, 8, N))
        x[:4] = [1.0, -1.0, 0.5 + rank, np.inf if rank == 0 else 1.0]  # inf propagates
        x = x.astype("float16" if dtype == "float16" else "float32" if dtype in ("float32", "bfloat16") else dtype)
        if dtype == "bfloat16":  # representable in bf16: the input is exact, only the sum rounds
            x = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
        return x
    if dtype == "bool":
        return rng.integers(0, 2, N).astype(bool)
    info = np.iinfo(dtype)
    lo, hi = (0, 12) if dtype == "uint8" else (max(info.min, -1000), min(info.max, 1000))
    return rng.integers(lo, hi, N).astype(dtype)
