import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from extes.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    from extes.testing.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), arch="gpt2")


@pytest.fixture(scope="session")
def postgres_cluster():
    """One throwaway PostgreSQL server for the session (extes.testing.postgres); skipped, with the reason,
    only where the server package or the driver is missing."""
    from extes.testing.postgres import TempPostgres, available

    reason = available()
    if reason:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    with TempPostgres() as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty study database: an SQLite file, and a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "study.sqlite")
    return request.getfixturevalue("postgres_cluster").url()


@pytest.fixture(scope="session")
def base(tiny_llama, tmp_path_factory) -> Path:
    """The engine tests' tiny llama with sharper logits (models_helpers.spicy_tiny), shared per session."""
    from models_helpers import shared_base_and_adapters

    return shared_base_and_adapters(tiny_llama, tmp_path_factory)[0]


@pytest.fixture(scope="session")
def adapters(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA adapters trained on `base` (one with strategy tags), shared per session."""
    from models_helpers import shared_base_and_adapters

    return shared_base_and_adapters(tiny_llama, tmp_path_factory)[1]
