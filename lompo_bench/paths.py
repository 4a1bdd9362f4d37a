"""Where things live on disk. Everything hangs off ``$LOMPO_BENCH_HOME`` (default ``~/.lompo-bench``)."""

import os
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("LOMPO_BENCH_HOME", Path.home() / ".lompo-bench")).expanduser()


def datasets_dir() -> Path:
    return home() / "datasets"


def runs_dir() -> Path:
    return home() / "runs"


def dataset_path(env: str, split: str, profile: str | None = None) -> Path:
    """Default store of (env, split). Non-paper profiles get their own folder so a smoke
    dataset never shadows a paper one."""
    base = datasets_dir() if profile in (None, "paper") else datasets_dir() / profile
    return base / env / f"{split}.zarr"


def repo_root() -> Path | None:
    """The source checkout this package runs from, if any (for leaderboard.csv and git info)."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else None
