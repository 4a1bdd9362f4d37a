"""Leaderboard: scores, IQM + stratified bootstrap, publishing (refusals, atomicity), Table I."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lompo_bench import store
from lompo_bench.errors import UserError
from lompo_bench.leaderboard import csv_store, scoring, table
from lompo_bench.leaderboard.cli import leaderboard as leaderboard_cli

# ---------------------------------------------------------------------------------------------
# helpers


def make_result(**overrides) -> dict:
    """A result.json exactly as docs/interfaces.md ("Runs") lists its fields."""
    result = {
        "algorithm": "lompo", "env": "walker", "split": "expert", "seed": 0, "profile": "smoke",
        "raw_return": 300.0, "return_std": 12.5, "normalized_score": 50.0, "success_rate": None,
        "eval_episodes": 2, "gradient_steps": 10, "train_steps": 10, "wall_time_s": 3.2,
        "dataset_path": "/nonexistent/walker/expert.zarr", "dataset_id": "walker/expert@smoke",
        "dataset_checksum": "sha256:abc", "random_return": 100.0, "expert_return": 500.0,
        "commit": "0123abcd", "package_version": "0.1.0", "hardware": "x86_64, 2 cpu, Test CPU",
        "device": "cpu", "timestamp": "2026-01-01T00:00:00+00:00", "config": {"batch_size": 4},
    }
    result.update(overrides)
    if "normalized_score" not in overrides and "raw_return" in result:
        result["normalized_score"] = scoring.normalized_score(result["raw_return"], result["random_return"],
                                                              result["expert_return"])
    return result


def write_run(root: Path, name: str, **overrides) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(make_result(**overrides)))
    return run_dir


# ---------------------------------------------------------------------------------------------
# scoring


def test_normalized_score_is_d4rls_definition():
    assert scoring.normalized_score(300.0, 100.0, 500.0) == pytest.approx(50.0)
    assert scoring.normalized_score(500.0, 100.0, 500.0) == pytest.approx(100.0)
    assert scoring.normalized_score(0.0, 10.0, 110.0) == pytest.approx(-10.0)
    assert scoring.normalized_score(-5.0, -10.0, -8.0) == pytest.approx(250.0)  # negative returns
    with pytest.raises(UserError, match="expert return equals random"):
        scoring.normalized_score(1.0, 2.0, 2.0)
    with pytest.raises(UserError, match="random return is None"):
        scoring.normalized_score(1.0, None, 2.0)


def test_iqm_hand_computed():
    # n=8: floor(0.25*8)=2 cut from each end -> mean(3, 4, 5, 6)
    assert scoring.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == pytest.approx(4.5)
    # n=5: floor(1.25)=1 cut -> mean(2, 3, 4); the outlier 100 is ignored
    assert scoring.iqm([100, 1, 2, 3, 4]) == pytest.approx(3.0)
    # n=3: floor(0.75)=0 cut -> plain mean
    assert scoring.iqm([1, 2, 6]) == pytest.approx(3.0)
    assert scoring.iqm([7.0]) == 7.0
    with pytest.raises(UserError):
        scoring.iqm([])


def test_stratified_bootstrap_matches_exact_distribution():
    # Cells A={0, 10}, B={20, 30}. A replicate resamples 2 runs in each cell; the pooled,
    # sorted 4 values are [a_lo, a_hi, b_lo, b_hi], IQM = (a_hi + b_lo) / 2 with
    # P(a_hi = 0) = 1/4 and P(b_lo = 30) = 1/4, so IQM is 10 w.p. 3/16, 15 w.p. 10/16,
    # 20 w.p. 3/16. Resampling the pooled runs instead (not stratified) could yield e.g. 5.
    cells = [[0.0, 10.0], [20.0, 30.0]]
    samples = scoring.bootstrap_iqm_samples(cells, reps=40_000, seed=1)
    values, counts = np.unique(samples, return_counts=True)
    assert values.tolist() == [10.0, 15.0, 20.0]
    assert counts / counts.sum() == pytest.approx([3 / 16, 10 / 16, 3 / 16], abs=0.01)
    assert scoring.stratified_bootstrap_ci(cells, reps=40_000) == (10.0, 20.0)
    agg = scoring.aggregate({("walker", "expert"): cells[0], ("walker", "medium-expert"): cells[1]}, reps=2_000)
    assert (agg.iqm, agg.runs, agg.cells) == (15.0, 4, 2)
    # one run per cell: nothing to resample, the interval is the point estimate (mean of 3)
    assert scoring.stratified_bootstrap_ci([[5.0], [7.0], [9.0]], reps=500) == (7.0, 7.0)


# ---------------------------------------------------------------------------------------------
# publishing


def test_publish_writes_recomputed_row(tmp_path):
    run = write_run(tmp_path, "run0", raw_return=420.0, success_rate=0.5)
    out = tmp_path / "lb.csv"
    report = csv_store.publish([run], out, verify=False)
    assert report.refused == [] and len(report.published) == 1
    rows = csv_store.read_rows(out)
    assert len(rows) == 1
    row = rows[0]
    assert row["normalized_score"] == pytest.approx(80.0)  # 100 * (420 - 100) / (500 - 100)
    assert row["raw_return"] == 420.0 and row["success_rate"] == 0.5 and row["seed"] == 0
    assert row["dataset_verified"] is False and row["run_id"] == csv_store.run_id(make_result(raw_return=420.0))
    assert out.read_text().splitlines()[0] == ",".join(csv_store.COLUMNS)


def test_publish_refuses_score_that_disagrees_with_raw_return(tmp_path):
    run = write_run(tmp_path, "run0", raw_return=420.0, normalized_score=95.0)
    report = csv_store.publish([run], tmp_path / "lb.csv", verify=False)
    assert report.published == []
    (reason,) = [r for _, r in report.refused]
    assert "disagrees" in reason and "80.0" in reason and "\n" not in reason


def test_publish_refuses_duplicates(tmp_path):
    out = tmp_path / "lb.csv"
    run = write_run(tmp_path, "run0")
    assert len(csv_store.publish([run], out, verify=False).published) == 1
    before = out.read_bytes()
    shutil.copytree(run, tmp_path / "copy")
    report = csv_store.publish([run, tmp_path / "copy"], out, verify=False)
    assert report.published == [] and len(report.refused) == 2
    assert all("already published" in r for _, r in report.refused)
    assert out.read_bytes() == before
    # the same run twice in one call: the second is refused
    other = write_run(tmp_path, "run1", seed=1)
    report = csv_store.publish([other, other], out, verify=False)
    assert len(report.published) == 1 and "already published" in report.refused[0][1]
    assert [r["seed"] for r in csv_store.read_rows(out)] == [0, 1]


@pytest.mark.parametrize("change, expected", [
    (lambda r: r.pop("raw_return"), "lacks raw_return"),
    (lambda r: r.pop("dataset_checksum"), "lacks dataset_checksum"),
    (lambda r: r.update(seed=None), "lacks seed"),
    (lambda r: r.update(seed="zero"), "seed is 'zero'"),
    (lambda r: r.update(profile="huge"), "profile is 'huge'"),
    (lambda r: r.update(eval_episodes=0), "eval_episodes is 0"),
    (lambda r: r.update(raw_return=float("nan")), "raw_return is nan"),
    (lambda r: r.update(expert_return=None), "records no random/expert reference returns"),
    (lambda r: r.update(random_return=0.0, expert_return=0.0, normalized_score=None),
     "expert return equals its random return (0.0)"),  # sparse-reward task nobody solved
    (lambda r: r.update(random_return=3.69, expert_return=3.37, raw_return=3.5,
                        normalized_score=100 * (3.5 - 3.69) / (3.37 - 3.69)),
     "expert return (3.37) is below its random return (3.69)"),  # smoke SAC that learned nothing
    (lambda r: r.update(timestamp="yesterday"), "timestamp is 'yesterday'"),
])
def test_publish_refuses_bad_rows(tmp_path, change, expected):
    result = make_result()
    change(result)
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(json.dumps(result))
    report = csv_store.publish([run], tmp_path / "lb.csv", verify=False)
    assert report.published == []
    (reason,) = [r for _, r in report.refused]
    assert expected in reason and "\n" not in reason
    assert csv_store.read_rows(tmp_path / "lb.csv") == []


def test_publish_refuses_unfinished_and_missing_dirs_but_keeps_good_ones(tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    good = write_run(tmp_path, "good")
    report = csv_store.publish([unfinished, tmp_path / "nowhere", good], tmp_path / "lb.csv", verify=False)
    assert [p for p, _ in report.published] == [good]
    reasons = dict(report.refused)
    assert "no result.json" in reasons[unfinished]
    assert "not a directory" in reasons[tmp_path / "nowhere"]


def test_publish_refuses_absent_dataset_unless_no_verify(tmp_path):
    run = write_run(tmp_path, "run0", dataset_path=str(tmp_path / "gone.zarr"))
    report = csv_store.publish([run], tmp_path / "lb.csv")
    assert report.published == []
    assert "not on this machine" in report.refused[0][1] and "--no-verify" in report.refused[0][1]
    assert len(csv_store.publish([run], tmp_path / "lb.csv", verify=False).published) == 1


def make_store(path: Path, *, finalize: bool = True, random: float = 100.0, expert: float = 500.0) -> str:
    """A real (tiny) dataset store: two walker episodes of 3 steps, 8 px images."""
    from lompo_bench.store import DatasetWriter

    attrs = {"env": {"name": "walker", "image_size": 8, "action_repeat": 2}, "split": "expert",
             "collector": {"algorithm": "sac", "seed": 0},
             "reference_returns": {"random": random, "expert": expert, "episodes": 5,
                                   "definition": "mean return of 5 episodes"}}
    writer = DatasetWriter.open(path, attrs)
    rng = np.random.default_rng(0)
    for _ in range(2):
        rows = 4
        writer.add_episode({
            "image": rng.integers(0, 255, (rows, 8, 8, 3), dtype=np.uint8),
            "state": rng.normal(size=(rows, 5)).astype(np.float32),
            "action": rng.uniform(-1, 1, (rows, 2)).astype(np.float32),
            "reward": rng.uniform(0, 1, rows).astype(np.float32),
            "is_first": np.eye(1, rows, 0, dtype=bool)[0], "is_last": np.eye(1, rows, rows - 1, dtype=bool)[0],
            "is_terminal": np.zeros(rows, dtype=bool),
        })
    return writer.finalize() if finalize else ""


def test_publish_reverifies_a_real_dataset(tmp_path):
    store_path = tmp_path / "expert.zarr"
    checksum = make_store(store_path)
    out = tmp_path / "lb.csv"
    good = write_run(tmp_path, "good", dataset_path=str(store_path), dataset_checksum=checksum)
    wrong_refs = write_run(tmp_path, "refs", seed=1, dataset_path=str(store_path), dataset_checksum=checksum,
                           expert_return=600.0)
    other_data = write_run(tmp_path, "other", seed=2, dataset_path=str(store_path), dataset_checksum="feedbeef")
    report = csv_store.publish([good, wrong_refs, other_data], out)
    assert [p for p, _ in report.published] == [good]
    assert csv_store.read_rows(out)[0]["dataset_verified"] is True
    assert "| Walker Walk | expert | 50.0 (1) | 75.8 |" in table.render(csv_store.read_rows(out), reps=100)
    reasons = dict(report.refused)
    assert "expert return 600.0" in reasons[wrong_refs] and "stores 500.0" in reasons[wrong_refs]
    assert "the dataset the run trained on" in reasons[other_data]

    # flip one byte of one stored chunk: the dataset no longer verifies and nothing is published
    chunk = next(p for p in sorted((store_path / "data" / "reward").rglob("*")) if p.is_file() and p.name != "zarr.json")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    assert store.verify(store_path)  # the store itself says it is broken
    before = out.read_bytes()
    run = write_run(tmp_path, "after-flip", seed=3, dataset_path=str(store_path), dataset_checksum=checksum)
    report = csv_store.publish([run], out)
    assert report.published == [] and "fails verification" in report.refused[0][1]
    assert out.read_bytes() == before


def test_publish_refuses_incomplete_dataset(tmp_path):
    store_path = tmp_path / "unfinished.zarr"
    make_store(store_path, finalize=False)
    run = write_run(tmp_path, "run", dataset_path=str(store_path))
    report = csv_store.publish([run], tmp_path / "lb.csv")
    assert report.published == [] and "is unusable" in report.refused[0][1]
    assert "incomplete" in report.refused[0][1]


def test_failure_before_rename_leaves_csv_intact(tmp_path, monkeypatch):
    out = tmp_path / "lb.csv"
    csv_store.publish([write_run(tmp_path, "run0")], out, verify=False)
    before = out.read_bytes()

    def crash(src, dst):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(csv_store, "_replace", crash)
    with pytest.raises(OSError, match="injected"):
        csv_store.publish([write_run(tmp_path, "run1", seed=1)], out, verify=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["lb.csv"]  # temp file removed


def test_killed_publish_leaves_csv_intact(tmp_path):
    out = tmp_path / "lb.csv"
    csv_store.publish([write_run(tmp_path, "run0")], out, verify=False)
    before = out.read_bytes()
    new_run = write_run(tmp_path, "run1", seed=1)
    # A publish that is SIGKILLed after writing and fsyncing the new file, before the rename.
    script = textwrap.dedent(f"""
        import sys, time
        from lompo_bench.leaderboard import csv_store
        def stall(src, dst):
            print("written", flush=True)
            time.sleep(60)
        csv_store._replace = stall
        csv_store.publish([{str(new_run)!r}], {str(out)!r}, verify=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert out.read_bytes() == before
    assert [r["seed"] for r in csv_store.read_rows(out)] == [0]
    assert len(list(tmp_path.glob(".lb.csv.*.tmp"))) == 1  # the killed publish's full copy
    # the next publish works and removes that stale temp file
    assert len(csv_store.publish([new_run], out, verify=False).published) == 1
    assert [r["seed"] for r in csv_store.read_rows(out)] == [0, 1]
    assert not list(tmp_path.glob(".lb.csv.*.tmp"))


def test_read_rows_rejects_foreign_csv(tmp_path):
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="has columns a, b"):
        csv_store.read_rows(bad)
    with pytest.raises(UserError):
        csv_store.publish([write_run(tmp_path, "run0")], bad, verify=False)
    assert bad.read_text() == "a,b\n1,2\n"


# ---------------------------------------------------------------------------------------------
# table and plot


@pytest.fixture
def small_board(tmp_path):
    """Walker expert: LOMPO seeds 0-2 at smoke (scores 40, 50, 90), BC one seed at smoke and one
    at cpu (so the blocks must not mix)."""
    out = tmp_path / "lb.csv"
    runs = []
    for seed, ret in enumerate([260.0, 300.0, 460.0]):  # -> 40, 50, 90
        runs.append(write_run(tmp_path, f"lompo{seed}", seed=seed, raw_return=ret))
    # seed 0 re-run later with a different commit: the table uses the latest (score 60)
    runs.append(write_run(tmp_path, "lompo0-rerun", seed=0, raw_return=340.0, commit="fff",
                          timestamp="2026-02-01T00:00:00+00:00"))
    runs.append(write_run(tmp_path, "bc-smoke", algorithm="bc", raw_return=140.0))  # 10
    runs.append(write_run(tmp_path, "bc-cpu", algorithm="bc", profile="cpu", raw_return=180.0,
                          split="medium-expert"))  # 20
    report = csv_store.publish(runs, out, verify=False)
    assert report.refused == []
    return out


def test_table_cells_and_blocks(small_board):
    rows = csv_store.read_rows(small_board)
    assert len(rows) == 6  # the CSV keeps every row
    md = table.render(rows, "md", reps=2_000)
    smoke = md[md.index("Profile `smoke`"):]
    cpu = md[md.index("Profile `cpu`"):md.index("Profile `smoke`")]
    # LOMPO walker/expert at smoke: seeds -> 60 (re-run), 50, 90: mean 66.7, sample std 20.8
    walker_expert = next(line for line in smoke.splitlines() if line.startswith("| Walker Walk | expert"))
    cells = [c.strip() for c in walker_expert.strip("|").split("|")]
    # ours, then the paper's value beside it; † = published with --no-verify
    assert cells[2:4] == ["66.7 ± 20.8 (3)†", "75.8"]
    assert cells[-2:] == ["10.0 (1)†", "11.8"]  # BC, one seed
    assert "20.0 (1)" not in smoke and "20.0 (1)" in cpu  # profiles are never mixed
    assert "| LOMPO | 66.7 |" in smoke  # IQM of 3 values = their mean
    tidy = list(csv.DictReader(io.StringIO(table.render(rows, "csv", profile="smoke", reps=2_000))))
    cell = next(r for r in tidy if (r["env"], r["split"], r["algorithm"]) == ("walker", "expert", "lompo"))
    assert (int(cell["n"]), float(cell["mean"]), float(cell["paper"])) == (3, pytest.approx(200 / 3), 75.8)
    assert {r["profile"] for r in tidy} == {"smoke"}
    agg = next(r for r in tidy if r["env"] == "*" and r["algorithm"] == "lompo")
    assert float(agg["ci_low"]) <= float(agg["mean"]) <= float(agg["ci_high"])
    latex = table.render(rows, "latex", profile="cpu", reps=2_000)
    assert "\\begin{tabular}" in latex and "D'Claw Screw" in latex and "20.0 (1)" in latex


def test_runs_on_two_versions_of_a_dataset_are_rows_of_their_own(tmp_path):
    """Seeds on datasets with different checksums (collected on different machines) never average:
    each version is its own row, labelled with its checksum, beside the paper's value of the split."""
    out = tmp_path / "lb.csv"
    runs = [write_run(tmp_path, f"v1-{seed}", seed=seed, raw_return=ret, dataset_checksum="aaaa1111bbbb")
            for seed, ret in enumerate([260.0, 300.0])]  # 40, 50
    runs.append(write_run(tmp_path, "v2-0", seed=0, raw_return=460.0, dataset_checksum="cccc2222dddd",
                          timestamp="2026-03-01T00:00:00+00:00"))  # 90: not the latest of seed 0 of v1
    runs.append(write_run(tmp_path, "bc-v1", algorithm="bc", raw_return=140.0, dataset_checksum="aaaa1111bbbb"))
    assert csv_store.publish(runs, out, verify=False).refused == []
    md = table.render(csv_store.read_rows(out), "md", profile="smoke", reps=2_000)
    lines = {line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
             for line in md.splitlines() if line.startswith("| Walker Walk |")}
    assert "expert" not in lines  # no unlabelled expert row: both versions have their own
    v1, v2 = lines["expert (data aaaa1111)"], lines["expert (data cccc2222)"]
    assert v1[2:4] == ["45.0 ± 7.1 (2)†", "75.8"] and v1[-2:] == ["10.0 (1)†", "11.8"]
    assert v2[2:4] == ["90.0 (1)†", "75.8"] and v2[-2] == "–"
    assert list(lines).index("expert (data aaaa1111)") > list(lines).index("medium-expert")  # the paper's order


def test_empty_table_shows_paper_values():
    md = table.render([], "md")
    assert "No runs published yet" in md
    assert "| Walker Walk | medium-replay | – | 74.9 | – | 44.7 |" in md
    assert md.count("| Door Open |") == 2  # the paper has no Door Open medium-replay
    with pytest.raises(UserError, match="unknown format"):
        table.render([], "html")


def test_cli_publish_table_plot(tmp_path, small_board):
    runner = CliRunner()
    good = write_run(tmp_path, "new", seed=7)
    before = small_board.read_bytes()
    res = runner.invoke(leaderboard_cli, ["publish", str(good), "--csv", str(small_board), "--no-verify", "--dry-run"])
    assert res.exit_code == 0 and "would publish" in res.output and small_board.read_bytes() == before
    bad = write_run(tmp_path, "bad", raw_return=420.0, normalized_score=1.0)
    res = runner.invoke(leaderboard_cli, ["publish", str(good), str(bad), "--csv", str(small_board), "--no-verify"])
    assert res.exit_code == 1
    assert "published" in res.output and f"refused {bad}: " in res.output and "1 published, 1 refused" in res.output
    md_path = tmp_path / "RESULTS.md"
    res = runner.invoke(leaderboard_cli, ["table", "--csv", str(small_board), "--profile", "smoke", "--out", str(md_path)])
    assert res.exit_code == 0, res.output
    assert "(4)" in md_path.read_text() and "Profile `cpu`" not in md_path.read_text()
    png = tmp_path / "board.png"
    res = runner.invoke(leaderboard_cli, ["plot", "--csv", str(small_board), "--out", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    res = runner.invoke(leaderboard_cli, ["plot", "--csv", str(small_board), "--out", str(tmp_path / "x.jpg")])
    assert res.exit_code == 2 and "accepted: a path ending in .png" in res.output


# ---------------------------------------------------------------------------------------------
# publishing from several processes at once; what a publish leaves behind


PUBLISHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lompo_bench.leaderboard import csv_store
    go, csv_path, runs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    while not go.exists():
        time.sleep(0.005)
    for run in runs:  # one publish per run, as sweep workers do
        assert len(csv_store.publish([run], csv_path, verify=False).published) == 1
""")


def test_two_concurrent_publishers_lose_no_row(tmp_path):
    out = tmp_path / "lb.csv"
    go = tmp_path / "go"
    batches = [[write_run(tmp_path / f"p{p}", f"run{i}", seed=100 * p + i) for i in range(15)] for p in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", PUBLISHER, str(go), str(out), *map(str, runs)])
             for runs in batches]
    time.sleep(1.0)  # both started and waiting
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = csv_store.read_rows(out)
    assert sorted(r["seed"] for r in rows) == sorted(100 * p + i for p in range(2) for i in range(15))
    assert len({r["run_id"] for r in rows}) == 30


def test_publish_keeps_csv_mode_and_owner(tmp_path):
    out = tmp_path / "lb.csv"
    old_umask = os.umask(0o022)
    try:
        csv_store.publish([write_run(tmp_path, "run0")], out, verify=False)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # a new CSV: what open() would make, not mkstemp's 0600
    out.chmod(0o664)
    if os.geteuid() == 0:
        os.chown(out, 12345, 23456)  # a leaderboard owned by someone else, published to by root
    csv_store.publish([write_run(tmp_path, "run1", seed=1)], out, verify=False)
    assert stat.S_IMODE(out.stat().st_mode) == 0o664
    if os.geteuid() == 0:
        assert (out.stat().st_uid, out.stat().st_gid) == (12345, 23456)
    assert [r["seed"] for r in csv_store.read_rows(out)] == [0, 1]


def test_stale_temp_files_are_removed_but_not_a_live_publishers(tmp_path):
    out = tmp_path / "lb.csv"
    csv_store.publish([write_run(tmp_path, "run0")], out, verify=False)
    stale = tmp_path / ".lb.csv.killed.tmp"  # what a publish SIGKILLed before its rename leaves
    stale.write_bytes(out.read_bytes())
    other = tmp_path / ".other.csv.x.tmp"  # another CSV's: not ours to remove
    other.write_text("")
    result = CliRunner().invoke(leaderboard_cli, ["table", "--csv", str(out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and other.exists()

    # A live publisher (holding the lock, its temp file written, about to rename) keeps its file:
    # the clean-up waits for the lock, and by then that file has become the CSV.
    release = tmp_path / "release"
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from lompo_bench.leaderboard import csv_store
        real = csv_store._replace
        def stall(src, dst):
            print("written", flush=True)
            while not Path({str(release)!r}).exists():
                time.sleep(0.01)
            real(src, dst)
        csv_store._replace = stall
        csv_store.publish([{str(write_run(tmp_path, "run1", seed=1))!r}], {str(out)!r}, verify=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        live = list(tmp_path.glob(".lb.csv.*.tmp"))
        assert len(live) == 1
        cleaner = subprocess.Popen([sys.executable, "-c", "from lompo_bench.leaderboard import csv_store; "
                                    f"csv_store.clean_stale_temps({str(out)!r})"])
        time.sleep(1.0)
        assert cleaner.poll() is None and live[0].exists()  # waiting for the lock, file untouched
        release.touch()
        assert proc.wait(timeout=30) == 0 and cleaner.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert [r["seed"] for r in csv_store.read_rows(out)] == [0, 1]
    assert not list(tmp_path.glob(".lb.csv.*.tmp"))


def test_publish_refuses_edited_reference_returns(tmp_path):
    """An attribute every normalized score depends on, edited after collection (and before
    training, so the run records the edited value): only the store's checksums can tell."""
    store_path = tmp_path / "expert.zarr"
    checksum = make_store(store_path)
    meta = store_path / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["reference_returns"]["expert"] = 400.0
    meta.write_text(json.dumps(doc))
    run = write_run(tmp_path, "run", dataset_path=str(store_path), dataset_checksum=checksum, expert_return=400.0)
    out = tmp_path / "lb.csv"
    report = csv_store.publish([run], out)
    assert report.published == [] and "reference_returns" in report.refused[0][1]
    assert "is unusable" in report.refused[0][1] or "fails verification" in report.refused[0][1]
    assert csv_store.read_rows(out) == []
