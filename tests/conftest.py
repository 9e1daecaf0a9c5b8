import os
from pathlib import Path

import pytest
import torch

# Two threads on a shared 2-core machine can be 100x slower than one.
torch.set_num_threads(1)

# Tests check archlint's behaviour, not an old run's results (and some monkeypatch the
# engine): no cache unless a test asks for one (tests/test_cache.py). Subprocesses inherit it.
os.environ["ARCHLINT_NO_CACHE"] = "1"

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"


def pytest_addoption(parser):
    parser.addoption(
        "--regen-fixtures",
        action="store_true",
        help="Rewrite fixtures/**/*.expected from archlint's current output instead of comparing.",
    )


@pytest.fixture
def regen(request):
    return request.config.getoption("--regen-fixtures")
