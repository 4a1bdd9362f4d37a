"""Provenance: the commit a run records is "+dirty" only where code differs from it."""

from __future__ import annotations

import subprocess

from lompo_bench.provenance import commit_of


def git(root, *args) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_published_rows_tables_and_figures_do_not_make_a_checkout_dirty_but_code_does(tmp_path):
    files = {"lompo_bench/runner.py": "x = 1\n", "leaderboard/leaderboard.csv": "run_id\n",
             "leaderboard/RESULTS.md": "# table\n", "docs/figures/curve.png": "png"}
    git(tmp_path, "init", "-q")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "first")
    sha = git(tmp_path, "rev-parse", "HEAD")
    assert commit_of(tmp_path) == sha

    # What publishing and `make table` write: rows, the table, a figure; an untracked file too.
    (tmp_path / "leaderboard/leaderboard.csv").write_text("run_id\nabc\n")
    (tmp_path / "leaderboard/RESULTS.md").write_text("# table, regenerated\n")
    (tmp_path / "docs/figures/curve.png").write_text("another png")
    (tmp_path / "notes.txt").write_text("scratch")
    assert commit_of(tmp_path) == sha

    (tmp_path / "lompo_bench/runner.py").write_text("x = 2\n")  # code: the run is not of `sha` any more
    assert commit_of(tmp_path) == sha + "+dirty"


def test_a_folder_that_is_not_a_checkout_has_an_unknown_commit(tmp_path):
    assert commit_of(tmp_path) == "unknown"
