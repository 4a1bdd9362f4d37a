"""`lompo-bench sweep` on a real local Ray (2 CPUs): collection job first, training jobs, publish,
Table I; a re-run skips what is finished; a sweep SIGKILLed midway and re-run trains only the rest.

The sweeps run as subprocesses (the command users type), on D'Claw smoke datasets (its smoke
SAC expert beats the random policy, so runs are publishable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lompo_bench.errors import UserError
from lompo_bench.leaderboard import csv_store
from lompo_bench.sweep import Grid, Sweep, parse_seeds, plan

ENV = "dclaw-screw"


def sweep_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "lompo_bench.cli", "sweep", "--envs", ENV, "--profile", "smoke",
            "--local-cpus", "2", *args]


def sweep_env(home: Path) -> dict:
    return dict(os.environ, LOMPO_BENCH_HOME=str(home), OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")


def session_members(sid: int) -> list[int]:
    """The processes of session ``sid``: a sweep's driver, its local Ray and Ray's workers. The workers
    lead process groups of their own, so a process-group kill misses them (and one went on to finish
    its job after the group was killed)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def end_sweep(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGKILL the whole sweep (its session: started with start_new_session) and wait until it is gone."""
    deadline = time.time() + timeout
    while members := session_members(proc.pid):
        assert time.time() < deadline, f"processes of the killed sweep still alive: {members}"
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.1)


def run_sweep(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(sweep_command(*args), env=sweep_env(home), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        end_sweep(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_dir(home: Path, algo: str, split: str, seed: int) -> Path:
    return home / "runs" / algo / "smoke" / ENV / split / f"seed{seed}"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A home of the sweeps' own (the session's may hold a dclaw random split made without its
    SAC run, as other tests make it), with the SAC run of seed 0 and its expert split."""
    from lompo_bench.collectors.collect import collect_sac_split

    home = tmp_path_factory.mktemp("sweep-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOMPO_BENCH_HOME", str(home))
        collect_sac_split(ENV, "expert", profile="smoke", seed=0, progress=False)
    return home


def test_grid_parsing_and_bad_input():
    assert parse_seeds("0-2") == (0, 1, 2) and parse_seeds("0,3") == (0, 3) and parse_seeds("1-2,0,2") == (1, 2, 0)
    for bad in ("", "a", "2-1", "-1", "0-x"):
        with pytest.raises(UserError, match="bad --seeds"):
            parse_seeds(bad)
    with pytest.raises(UserError, match="unknown algorithm 'bcq'"):
        Grid.parse("bc,bcq", ENV, "expert", "0", "smoke")
    with pytest.raises(UserError, match="unknown setting 'nope' for bc"):
        Grid.parse("bc", ENV, "expert", "0", "smoke", ["nope=1"])


def test_skip_published_needs_publish_and_no_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    plain = plan(Grid.parse("bc", ENV, "expert", "0", "smoke"), collect=True)
    with pytest.raises(UserError, match="--skip-published goes with --publish"):
        Sweep(plain, skip_published=True)
    with_settings = plan(Grid.parse("bc", ENV, "expert", "0", "smoke", ["batch_size=64"]), collect=True)
    with pytest.raises(UserError, match="cannot be combined with --set"):
        Sweep(with_settings, publish_csv=tmp_path / "lb.csv", skip_published=True)


def test_missing_dataset_without_collect_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=f"lompo-bench collect {ENV} --split expert --profile smoke"):
        plan(Grid.parse("bc", ENV, "expert", "0", "smoke"))


def test_plan_skips_finished_runs_but_not_ones_trained_with_other_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    for seed, batch in ((0, 64), (1, 32)):
        rd = run_dir(tmp_path, "bc", "expert", seed)
        rd.mkdir(parents=True)
        (rd / "config.json").write_text(json.dumps({"config": {"batch_size": batch}}))
        (rd / "result.json").write_text("{}")
    made = plan(Grid.parse("bc,cql", ENV, "expert", "0-2", "smoke", ["batch_size=64"]), collect=True)
    assert made.finished == [run_dir(tmp_path, "bc", "expert", 0)]  # trained with batch_size=64: done
    assert [j.key for j in made.jobs if j.kind == "collect"] == [f"collect {ENV} (expert)"]
    conflict = next(j for j in made.jobs if j.key == "bc dclaw-screw/expert seed 1")
    assert conflict.state == "failed" and "batch_size=32, not 64" in conflict.message and "--runs-dir" in conflict.message
    queued = [j.key for j in made.jobs if j.kind == "train" and j.state == "queued"]
    assert queued == ["bc dclaw-screw/expert seed 2"] + [f"cql dclaw-screw/expert seed {s}" for s in range(3)]
    assert all(j.needs == f"collect {ENV} (expert)" for j in made.jobs if j.kind == "train")
    # What a sweep writing to a log (not a terminal) prints as its periodic status line.
    assert Sweep(made).status_line() == "1 skipped, 5 queued, 0 running, 0 done, 1 failed; elapsed 0 s, ETA –"


def test_eta_before_any_job_finishes_comes_from_finished_runs_in_the_runs_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    for seed, wall in ((0, 500.0), (1, 700.0)):  # earlier runs of bc on this env: 600 s on average
        rd = run_dir(tmp_path, "bc", "expert", seed)
        rd.mkdir(parents=True)
        (rd / "config.json").write_text(json.dumps({"config": {}}))
        (rd / "result.json").write_text(json.dumps({"wall_time_s": wall}))
    sweep = Sweep(plan(Grid.parse("bc", ENV, "expert", "0-3", "smoke"), collect=True))
    queued = [j for j in sweep.jobs.values() if j.kind == "train"]
    assert [j.seed for j in queued] == [2, 3]
    assert sweep.eta_seconds() == pytest.approx(1200.0)  # two queued jobs, one slot
    queued[0].state, queued[0].started = "running", time.time() - 200
    sweep.slots = 2
    assert sweep.eta_seconds() == pytest.approx((400.0 + 600.0) / 2, abs=5)
    assert sweep.status_line().endswith("ETA 8 min")
    other = Sweep(plan(Grid.parse("cql", ENV, "expert", "0", "smoke"), collect=True))
    assert other.eta_seconds() is None  # no cql run anywhere yet: no estimate rather than a guess

    # A fresh machine has no runs, but the leaderboard it publishes to records how long published ones took.
    import csv

    template = next(csv.DictReader(open(Path(__file__).parent.parent / "leaderboard" / "leaderboard.csv")))
    lb = tmp_path / "lb.csv"
    with open(lb, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=csv_store.COLUMNS, lineterminator="\n")
        writer.writeheader()
        for algo, env, profile, wall in (("cql", ENV, "smoke", 800), ("cql", ENV, "smoke", 1000),
                                         ("cql", ENV, "cpu", 5000), ("bc", ENV, "smoke", 10), ("cql", "walker", "smoke", 7)):
            writer.writerow({**template, "algorithm": algo, "env": env, "profile": profile, "wall_time_s": wall})
    published = Sweep(plan(Grid.parse("cql", ENV, "expert", "0", "smoke"), collect=True), publish_csv=lb)
    assert published.eta_seconds() == pytest.approx(900.0)  # this profile and env only
    assert Sweep(plan(Grid.parse("cql", "walker", "expert", "0", "smoke"), collect=True),
                 publish_csv=lb).eta_seconds() == pytest.approx(7.0)


def test_sweep_collects_trains_publishes_and_skips_finished(home, tmp_path):
    csv = tmp_path / "lb.csv"
    args = ("--algos", "bc", "--splits", "expert,random", "--seeds", "0", "--collect", "--publish", "--csv", str(csv))
    done = run_sweep(home, *args)
    assert done.returncode == 0, done.stderr
    assert "1 datasets to collect" in done.stderr  # random is missing; expert exists
    assert f"done collect {ENV} (random)" in done.stderr
    assert f"started bc {ENV}/random seed 0" in done.stderr  # each job's start is a line of the log
    for split in ("expert", "random"):
        rd = run_dir(home, "bc", split, 0)
        assert (rd / "result.json").is_file()
        log = (rd / "sweep.log").read_text()
        assert "publish:" in log and "normalized score" in log  # the run's own messages went to its log
        assert not (rd.parent / ".seed0.sweep.log").exists()  # the staging log moved into the run dir
    rows = csv_store.read_rows(csv)
    assert sorted(r["split"] for r in rows) == ["expert", "random"] and {r["algorithm"] for r in rows} == {"bc"}
    assert all(r["dataset_verified"] for r in rows)
    assert "| D'Claw Screw | expert |" in done.stdout and "(1) |" in done.stdout  # Table I of the grid

    before = {s: (run_dir(home, "bc", s, 0) / "result.json").read_bytes() for s in ("expert", "random")}
    again = run_sweep(home, *args)
    assert again.returncode == 0, again.stderr
    assert "2 finished (skipped), 0 to train, 0 datasets to collect" in again.stderr
    assert not [line for line in again.stderr.splitlines() if line.startswith("done ")]  # no job ran
    assert len(csv_store.read_rows(csv)) == 2  # nothing published twice
    assert {s: (run_dir(home, "bc", s, 0) / "result.json").read_bytes() for s in before} == before

    # A machine without these run directories (a fresh runs folder), the same CSV: with
    # --skip-published nothing is trained again and Table I shows the published rows.
    fresh = tmp_path / "fresh-runs"
    elsewhere = run_sweep(home, *args, "--skip-published", "--runs-dir", str(fresh))
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert "0 finished (skipped), 2 to train" in elsewhere.stderr
    assert elsewhere.stderr.count("already published (run_id") == 2
    assert "0 done, 0 failed, 0 skipped (already finished), 2 skipped (already published)" in elsewhere.stderr
    assert not list(fresh.rglob("result.json"))
    assert len(csv_store.read_rows(csv)) == 2
    assert "| D'Claw Screw | expert |" in elsewhere.stdout and "(1) |" in elsewhere.stdout


def test_killed_sweep_rerun_trains_only_the_rest(home, tmp_path):
    csv = tmp_path / "lb.csv"
    # Two CPUs per job on a 2-CPU Ray: one job at a time, so the kill lands between them. Each job trains
    # long enough (seconds, where a warm smoke BC job takes 1 s) that the second cannot finish between the
    # first's result appearing and the kill.
    args = ("--algos", "bc", "--splits", "expert", "--seeds", "1-2", "--cpus-per-job", "2", "--set", "steps=1000",
            "--publish", "--csv", str(csv))
    runs = [run_dir(home, "bc", "expert", s) for s in (1, 2)]
    driver = subprocess.Popen(sweep_command(*args), env=sweep_env(home), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not any((r / "result.json").exists() for r in runs):
            assert driver.poll() is None, "the sweep ended before any job finished"
            assert time.time() < deadline, "no job finished in time"
            time.sleep(0.2)
        # The whole sweep at once (driver, its local Ray and the running job): a driver-only kill leaves
        # Ray seconds to finish the next job before it notices, and on an idle machine it did.
        end_sweep(driver)
        driver.wait(timeout=30)
    finally:
        end_sweep(driver)
    finished = [r for r in runs if (r / "result.json").exists()]
    assert len(finished) == 1
    kept = {r: (r / "result.json").read_bytes() for r in finished}
    rest = [r for r in runs if r not in finished]

    again = run_sweep(home, *args)
    assert again.returncode == 0, again.stderr
    assert "1 finished (skipped), 1 to train" in again.stderr
    assert {r: (r / "result.json").read_bytes() for r in finished} == kept  # not retrained
    assert (rest[0] / "result.json").is_file()
    assert sorted(r["seed"] for r in csv_store.read_rows(csv)) == [1, 2]  # each published once
    trained_twice = [r for r in finished if (r / "sweep.log").read_text().count("normalized score") > 1]
    assert not trained_twice


def test_sweep_survives_losing_its_status_actor(home):
    """Ray's memory monitor kills workers when the node runs low (whoever used the memory); it once
    killed the actor jobs report their start to, and the driver died with a traceback."""
    args = ("--algos", "bc", "--splits", "expert", "--seeds", "3-4", "--cpus-per-job", "2", "--set", "steps=1000")
    driver = subprocess.Popen(sweep_command(*args), env=sweep_env(home), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline, killed = time.time() + 300, False
        while not killed:
            assert driver.poll() is None and time.time() < deadline, "the status actor never started"
            for pid in session_members(driver.pid):
                try:
                    name = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if name.startswith(b"ray::StartedJobs"):
                    os.kill(pid, signal.SIGKILL)
                    killed = True
            time.sleep(0.2)
        out, err = driver.communicate(timeout=600)
    finally:
        end_sweep(driver)
    assert driver.returncode == 0, err
    assert "Traceback" not in err
    for seed in (3, 4):
        assert (run_dir(home, "bc", "expert", seed) / "result.json").is_file()


def test_published_row_is_the_latest_on_this_machines_dataset_version(tmp_path, monkeypatch):
    """--skip-published's lookup: a newer row for the same run made on another version of the
    split (a machine of another CPU family) neither hides the row made on the local dataset nor
    counts for it."""
    import csv

    from test_latent_model import write_random_store

    from lompo_bench import paths
    from lompo_bench.sweep import published_row

    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path / "home"))
    local = write_random_store(paths.dataset_path("walker", "random", "smoke"), "walker", episodes=2, steps=10)
    template = next(csv.DictReader(open(Path(__file__).parent.parent / "leaderboard" / "leaderboard.csv")))
    base = {**template, "algorithm": "lompo", "env": "walker", "split": "random", "seed": "0", "profile": "smoke"}
    other = "f" * 32

    def write(*rows):
        path = tmp_path / "lb.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=csv_store.COLUMNS, lineterminator="\n")
            writer.writeheader()
            for run_id, checksum, when in rows:
                writer.writerow({**base, "run_id": run_id, "dataset_checksum": checksum, "timestamp": when})
        return path

    older, newer, newest = "2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z"
    assert published_row(write(("mine", local.checksum, older), ("theirs", other, newer)),
                         "lompo", "walker", "random", 0, "smoke")["run_id"] == "mine"
    assert published_row(write(("mine", local.checksum, older), ("mine-again", local.checksum, newest),
                               ("theirs", other, newer)), "lompo", "walker", "random", 0, "smoke")["run_id"] == "mine-again"
    assert published_row(write(("theirs", other, newer)), "lompo", "walker", "random", 0, "smoke") is None
    assert published_row(write(("mine", local.checksum, older)), "lompo", "walker", "random", 1, "smoke") is None
