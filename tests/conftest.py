import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ICHBENCH_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A tiny synthetic DICOM dataset shared by the reader / preprocessing tests."""
    from ichbench.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, SyntheticConfig(seed=3, n_normal=3, n_pathological=3, image_size=256, n_slices=(8, 10)))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a test module: on a shared 2-core machine OpenMP threads spin
    against each other and run tiny training steps several times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
