import os

# Kernels run in Triton's interpreter on the CPU unless the GPU run asks for CUDA.
if os.environ.get("FLAGEN_TEST_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state, so a test that draws from it (randn_like,
    module initialisation) sees the same numbers whatever ran before it, alone or in a shard."""
    torch.manual_seed(0)
