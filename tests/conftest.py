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
FIXTURE_PREFIX = "# archlint-fixture:"


def fixture_fields(path: Path) -> dict:
    """The settings a fixture asks for in its first lines, one TOML comment each
    (`# archlint-fixture: batch_size = 4`): for rules that depend on the run's settings or
    are off by default."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith(FIXTURE_PREFIX):
            break
        lines.append(line[len(FIXTURE_PREFIX):])
    return tomllib.loads("\n".join(lines))


def pytest_addoption(parser):
    parser.addoption(
        "--regen-fixtures",
        action="store_true",
        help="Rewrite fixtures/**/*.expected from archlint's current output instead of comparing.",
    )


@pytest.fixture
def regen(request):
    return request.config.getoption("--regen-fixtures")
