"""Where things live on disk. Everything hangs off ``$LOMPO_BENCH_HOME`` (default ``~/.lompo-bench``)."""

import os
from pathlib import Path


def home() -> Path:
    """The folder everything lives in; a one-line ``UserError`` if it (or a parent) is a file."""
    from .errors import UserError

    set_by_env = bool(os.environ.get("LOMPO_BENCH_HOME"))
    path = Path(os.environ["LOMPO_BENCH_HOME"] if set_by_env else Path.home() / ".lompo-bench").expanduser()
    name = f"LOMPO_BENCH_HOME={path}" if set_by_env else f"the default home {path}"
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == path else f"is inside {folder}, which is a file"
                raise UserError(f"{name} {what}; it must be a folder (created if missing): point "
                                f"LOMPO_BENCH_HOME at a folder")
            break
    return path


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
