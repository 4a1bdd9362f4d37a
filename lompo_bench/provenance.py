"""Who made an artifact and how: package version, git commit, hardware, time."""

import datetime as _dt
import os
import platform
import subprocess
from functools import lru_cache

from . import __version__
from .paths import repo_root


# What the suite itself writes into a checkout: published rows, the regenerated table and figures.
# Changes to them are results, not code, so they do not make a commit "+dirty" (a sweep publishing
# into its own checkout's CSV would otherwise mark every later row of the same code dirty).
RESULT_PATHS = ("leaderboard/leaderboard.csv", "leaderboard/RESULTS.md", "leaderboard/RESULTS.png", "docs/figures")


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the checkout (``+dirty`` if its code has uncommitted changes), or ``unknown``."""
    root = repo_root()
    return "unknown" if root is None else commit_of(root)


def commit_of(root) -> str:
    """HEAD of the git checkout at `root`, ``+dirty`` if a tracked file outside `RESULT_PATHS`
    differs from it; ``unknown`` where `root` is not a git checkout."""
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){p}" for p in RESULT_PATHS)],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def hardware() -> str:
    """e.g. ``x86_64, 2 cpu, AMD EPYC 7B13`` or ``..., cuda NVIDIA H100 80GB HBM3``."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [platform.machine(), f"{os.cpu_count()} cpu", cpu]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"cuda {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return ", ".join(parts)


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def stamp() -> dict:
    """The provenance fields every artifact records."""
    return {"package_version": __version__, "commit": git_commit(), "hardware": hardware(), "created": now()}
