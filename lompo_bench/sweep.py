"""Sweeps: every (algorithm, env, split, seed) of a grid trained as Ray jobs, resumably.

A sweep is planned, then run:

- **plan** (`plan`): the grid's runs, each with its run directory (the layout of `lompo-bench
  run`). A run whose ``result.json`` exists is finished and gets no job. A dataset that is
  missing (or unfinished) gets one collection job per env (`collect_job`: the SAC splits from
  one SAC run of seed 0, then the random split, as `lompo-bench collect` does; an unfinished
  store resumes); that env's training jobs are submitted only when it has succeeded. Without
  ``collect`` a missing dataset is an error before anything starts. Each run appears once, so
  a sweep never schedules the same run twice; across sweeps and machines the runner's own run
  lock keeps one training per run directory.
- **run** (`Sweep.run`): jobs go to Ray (a cluster at ``address``, else a local Ray started
  here), ``cpus_per_job``/``gpus_per_job`` each. Workers get ``MUJOCO_GL``, ``OMP_NUM_THREADS=1``
  and ``LOMPO_BENCH_HOME`` through the job's ``runtime_env`` (Ray reuses worker processes, and
  MuJoCo reads ``MUJOCO_GL`` once per process) and use one torch thread. Each job writes its
  output to ``<run_dir>/sweep.log`` (collection: ``<datasets>/<env>/sweep-collect.log``). A job
  that fails is reported with its log path; the others go on.
- **publish** (optional): a training job appends its run to the leaderboard CSV right after it
  finishes (`leaderboard.csv_store.publish`: re-verifies the dataset, atomic, serialized by a
  lock, so concurrent workers lose no row). Finished runs of the grid that are not in the CSV
  yet (a sweep killed between training and publishing) are published at the start.
- **skip published** (optional, with publish): a training job whose run the CSV already holds
  a row for (`published_row`: the row Table I shows for that algorithm, env, split, seed and
  profile, made on a dataset with the same checksum) is not trained again, wherever that row
  was made. Run directories stay on the machine that
  made them, the CSV travels (a git checkout), and the collectors rebuild a dataset bit for bit
  with the same code: so the same sweep command, run on fresh machines one after another,
  builds the table up instead of retraining it. Checked in the worker, once the job's dataset
  exists (a sweep may be collecting it). Rows do not record ``--set`` values, so a grid with
  ``--set`` cannot skip published rows.

Interrupted training resumes from its checkpoint (the runner does that by itself), so a sweep
killed at any point and re-run with the same command trains only what is missing. The run
directories, datasets and CSV must be on a filesystem every worker shares (on one machine:
always).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from . import paths, profiles
from .errors import UserError, choice_error

COLLECT_SEED = 0  # `lompo-bench collect`'s default: the one SAC run each env's datasets come from
RUN_LOG = "sweep.log"
COLLECT_LOG = "sweep-collect.log"
LOCAL_RAY_ATTEMPTS = 3
WORKER_LOSS_RETRIES = 1
STATUS_EVERY_S = 300.0  # off a terminal (a log file) the live table becomes a status line this often


# --------------------------------------------------------------------------------------------
# The grid


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-2"`` -> (0, 1, 2); ``"0,3"`` -> (0, 3); ``"0-1,5"`` -> (0, 1, 5)."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        lo, dash, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if dash else (int(part), int(part))
        except ValueError:
            first = last = -1
        if first < 0 or last < first:
            raise UserError(f"bad --seeds {text!r}; accepted: non-negative integers and ranges, e.g. 0-2 or 0,3")
        seeds += [s for s in range(first, last + 1) if s not in seeds]
    return tuple(seeds)


def parse_names(text: str, what: str, accepted) -> tuple[str, ...]:
    """``"bc,cql"`` -> ("bc", "cql"), each checked against ``accepted``, duplicates dropped."""
    names = tuple(dict.fromkeys(n.strip() for n in str(text).split(",") if n.strip()))
    if not names:
        raise UserError(f"no {what} given; accepted: a comma-separated list of {', '.join(accepted)}")
    for name in names:
        if name not in accepted:
            raise choice_error(what, name, accepted)
    return names


@dataclass(frozen=True)
class Grid:
    algos: tuple[str, ...]
    envs: tuple[str, ...]
    splits: tuple[str, ...]
    seeds: tuple[int, ...]
    profile: str = profiles.DEFAULT_PROFILE
    overrides: dict = field(default_factory=dict)  # --set key -> text, for every algorithm

    @classmethod
    def parse(cls, algos: str, envs: str, splits: str, seeds: str, profile: str, settings=()) -> "Grid":
        from lompo_bench import envs as envs_module, registry
        from lompo_bench.collectors.config import SPLITS

        from .runner import apply_overrides, parse_settings

        profiles.check(profile)
        grid = cls(parse_names(algos, "algorithm", registry.available()),
                   parse_names(envs, "env", envs_module.ENV_NAMES), parse_names(splits, "split", SPLITS),
                   parse_seeds(seeds), profile, parse_settings(settings))
        for algo in grid.algos:  # an unknown key or a bad value fails now, not in every job
            apply_overrides(registry.get(algo).Config(), grid.overrides, algo)
        return grid


# --------------------------------------------------------------------------------------------
# Jobs


@dataclass
class Job:
    key: str                       # what the summary and messages call it
    kind: str                      # "collect" or "train"
    env: str
    log_path: Path
    splits: tuple[str, ...] = ()   # collect: the datasets to make
    algo: str = ""
    split: str = ""
    seed: int = 0
    run_dir: Path | None = None
    needs: str | None = None       # key of the collection job this one waits for
    state: str = "queued"          # queued -> running -> done | failed
    message: str = ""
    started: float | None = None
    seconds: float | None = None
    published_row: dict | None = None  # skip published: the CSV's row that made training unneeded

    def spec(self, grid: Grid, publish_csv: Path | None, skip_published: bool = False) -> dict:
        """What the worker needs (plain data, so it pickles to any machine)."""
        return {"key": self.key, "kind": self.kind, "env": self.env, "splits": list(self.splits),
                "algo": self.algo, "split": self.split, "seed": self.seed, "profile": grid.profile,
                "overrides": dict(grid.overrides), "run_dir": str(self.run_dir) if self.run_dir else None,
                "log_path": str(self.log_path), "publish_csv": str(publish_csv) if publish_csv else None,
                "skip_published": skip_published}


@dataclass
class Plan:
    grid: Grid
    jobs: list[Job]          # collection jobs first
    finished: list[Path]     # run directories already holding result.json (no job)


def run_dir_of(runs_root: Path | None, algo: str, profile: str, env: str, split: str, seed: int) -> Path:
    from .runner import default_run_dir

    default = default_run_dir(algo, profile, env, split, seed)
    return default if runs_root is None else Path(runs_root) / default.relative_to(paths.runs_dir())


def store_complete(path: Path) -> bool:
    """Whether a store's root metadata says it was finalized (the last thing its writer does)."""
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {}).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def settings_conflict(run_dir: Path, algo: str, overrides: dict) -> str | None:
    """The first --set value that a finished run in ``run_dir`` was not trained with, if any."""
    if not overrides:
        return None
    from lompo_bench import registry

    from .runner import config_types, jsonable, parse_value

    try:
        saved = json.loads((run_dir / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{run_dir} has result.json but no readable config.json"
    types_ = config_types(registry.get(algo).Config())
    for key, text in overrides.items():
        wanted = jsonable(parse_value(text, types_[key], key))
        if saved.get(key) != wanted:
            return (f"{run_dir} holds a finished run with {key}={json.dumps(saved.get(key))}, not {text}; "
                    "pass --runs-dir for a folder of runs with these settings")
    return None


def plan(grid: Grid, *, collect: bool = False, runs_root: Path | None = None) -> Plan:
    """Jobs for what the grid lacks; see the module docstring."""
    from lompo_bench.collectors.config import SAC_SPLITS

    missing: dict[str, list[str]] = {}
    for env in grid.envs:
        for split in grid.splits:
            if not store_complete(paths.dataset_path(env, split, grid.profile)):
                missing.setdefault(env, []).append(split)
    if missing and not collect:
        commands = "; ".join(f"lompo-bench collect {env} --split {split} --profile {grid.profile}"
                             for env, splits in missing.items() for split in splits)
        raise UserError(f"missing {grid.profile} datasets: {commands} (or pass --collect to make them first)")

    jobs, finished = [], []
    for env, splits in missing.items():
        # SAC splits first: the random split takes its expert reference return from the SAC run.
        ordered = tuple(s for s in SAC_SPLITS if s in splits) + tuple(s for s in splits if s not in SAC_SPLITS)
        log = paths.dataset_path(env, ordered[0], grid.profile).parent / COLLECT_LOG
        jobs.append(Job(key=f"collect {env} ({', '.join(ordered)})", kind="collect", env=env, splits=ordered,
                        log_path=log))
    collect_keys = {j.env: j.key for j in jobs}
    for algo in grid.algos:
        for env in grid.envs:
            for split in grid.splits:
                for seed in grid.seeds:
                    run_dir = run_dir_of(runs_root, algo, grid.profile, env, split, seed)
                    job = Job(key=f"{algo} {env}/{split} seed {seed}", kind="train", env=env, algo=algo,
                              split=split, seed=seed, run_dir=run_dir, log_path=run_dir / RUN_LOG,
                              needs=collect_keys.get(env))
                    if (run_dir / "result.json").exists():
                        conflict = settings_conflict(run_dir, algo, grid.overrides)
                        if conflict is None:
                            finished.append(run_dir)
                            continue
                        job.state, job.message = "failed", conflict
                    jobs.append(job)
    return Plan(grid, jobs, finished)


# --------------------------------------------------------------------------------------------
# What runs in a worker


@contextlib.contextmanager
def job_log(path: Path):
    """Send everything this process writes (Python and C level, stdout and stderr) to ``path``
    while the job runs; a reused worker gets its own streams back afterwards."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()} on {os.uname().nodename}\n")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield log
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def collect_job(spec: dict) -> None:
    from lompo_bench.collectors.collect import collect_sac_split
    from lompo_bench.collectors.config import SAC_SPLITS
    from lompo_bench.collectors.random_policy import collect_random

    for split in spec["splits"]:
        if store_complete(paths.dataset_path(spec["env"], split, spec["profile"])):
            continue  # made meanwhile (another sweep or `collect`)
        if split in SAC_SPLITS:
            path = collect_sac_split(spec["env"], split, profile=spec["profile"], seed=COLLECT_SEED, progress=False)
        else:
            path = collect_random(spec["env"], profile=spec["profile"], seed=COLLECT_SEED, progress=False)
        print(f"wrote {path}", flush=True)


def staging_log(run_dir: Path) -> Path:
    """Where a new run's log starts: the runner takes only an empty folder for a new run, so the
    log moves into the run directory once the runner has made it (`LogIntoRunDir`)."""
    return run_dir.parent / f".{run_dir.name}.{RUN_LOG}"


def log_path_of(spec: dict) -> Path:
    if spec["kind"] != "train":
        return Path(spec["log_path"])
    run_dir = Path(spec["run_dir"])
    return Path(spec["log_path"]) if (run_dir / "config.json").exists() else staging_log(run_dir)


def train_job(spec: dict) -> dict:
    from .runner import Callback, ConsoleReporter, run

    class LogIntoRunDir(Callback):
        """Once the run directory holds its run, the log (still open) moves into it."""

        def on_start(self, trainer):
            staged, final = staging_log(Path(spec["run_dir"])), Path(spec["log_path"])
            if staged.exists() and not final.exists():
                os.replace(staged, final)  # same folder tree: the open file keeps being written

    if (Path(spec["run_dir"]) / "result.json").exists():  # finished meanwhile by another sweep or `run`
        print("finished by another process; not trained again", flush=True)
        return {"note": "finished meanwhile by another process"}
    if spec["skip_published"]:
        row = published_row(spec["publish_csv"], spec["algo"], spec["env"], spec["split"], spec["seed"],
                            spec["profile"])
        if row is not None:
            note = (f"already published (run_id {row['run_id']}, score {row['normalized_score']}, "
                    f"commit {row['commit'][:7]}); not trained again")
            print(note, flush=True)
            return {"note": note, "published_row": row}
    run_dir = run(spec["algo"], spec["env"], spec["split"], seed=spec["seed"], profile=spec["profile"],
                  overrides=spec["overrides"] or None, out=spec["run_dir"],
                  callbacks=[ConsoleReporter(progress=False), LogIntoRunDir()])
    outcome = {}
    if spec["publish_csv"]:
        from lompo_bench.leaderboard import csv_store

        report = csv_store.publish([run_dir], spec["publish_csv"])
        if report.published:
            row = report.published[0][1]
            outcome["published"] = f"score {row['normalized_score']:.1f}, run_id {row['run_id']}"
        else:
            outcome["refused"] = report.refused[0][1]
        print(f"publish: {outcome}", flush=True)
    return outcome


def published_row(csv_path, algo: str, env: str, split: str, seed: int, profile: str) -> dict | None:
    """The row Table I shows for this run on the dataset that is on this machine now: the latest
    of its algorithm, env, split, seed and profile among the rows made on this dataset's checksum
    (`table.latest_per_seed`; the table keeps dataset versions apart, so a newer row on another
    version of the split does not hide it, and a dataset rebuilt differently does not count)."""
    from lompo_bench.leaderboard import csv_store, table
    from lompo_bench.store import Dataset

    checksum = Dataset.open(paths.dataset_path(env, split, profile)).checksum
    on_this_version = [r for r in csv_store.read_rows(csv_path) if r["dataset_checksum"] == checksum]
    rows = [r for r in table.latest_per_seed(on_this_version)
            if (r["algorithm"], r["env"], r["split"], str(r["seed"]), r["profile"]) == (algo, env, split, str(seed), profile)]
    return rows[0] if rows else None


def run_job(spec: dict, status=None) -> dict:
    """One job in a worker: its output to its log, one torch thread; never raises for a failed
    job (the outcome says what failed), so the driver can tell job failures from lost workers."""
    from .runner import set_torch_threads

    set_torch_threads(1)  # and the heap settings of a training process, as `run` applies them
    if status is not None:
        status.started.remote(spec["key"], time.time())
    log = log_path_of(spec)
    with job_log(log):
        try:
            outcome = (train_job if spec["kind"] == "train" else collect_job)(spec) or {}
            return {"ok": True, **outcome}
        except UserError as exc:
            print(f"error: {exc.format_message()}", flush=True)
            failure = exc.format_message()
        except BaseException as exc:  # a crash of this job (KeyboardInterrupt too: ray.cancel)
            traceback.print_exc()
            failure = f"{type(exc).__name__}: {exc}"
    final = Path(spec["log_path"])
    return {"ok": False, "message": failure, "log": str(final if final.exists() else log)}


def started_since_last(ray, status) -> list[tuple[str, float]]:
    """What the jobs reported starting since the last call; nothing where the actor was lost."""
    try:
        return ray.get(status.take.remote(), timeout=30)
    except Exception:  # RayActorError, OutOfMemoryError, GetTimeoutError: jobs run on regardless
        return []


class StartedJobs:
    """A Ray actor the jobs tell when they start, so the summary can say what is running."""

    def __init__(self):
        self._new: list[tuple[str, float]] = []

    def started(self, key: str, when: float) -> None:
        self._new.append((key, when))

    def take(self) -> list[tuple[str, float]]:
        new, self._new = self._new, []
        return new


# --------------------------------------------------------------------------------------------
# The driver


def worker_env() -> dict[str, str]:
    """Environment every worker process needs (set through the Ray job's runtime_env)."""
    from .rendering import choose_gl

    env = {"MUJOCO_GL": choose_gl(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "LOMPO_BENCH_HOME": str(paths.home().resolve())}
    if os.environ.get("PYOPENGL_PLATFORM"):
        env["PYOPENGL_PLATFORM"] = os.environ["PYOPENGL_PLATFORM"]  # mujoco requires the two to agree
    return env


@dataclass
class Sweep:
    plan: Plan
    address: str | None = None     # a Ray cluster; None: RAY_ADDRESS, else a local Ray started here
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    local_cpus: int | None = None  # CPUs of the local Ray (default: all)
    publish_csv: Path | None = None
    skip_published: bool = False   # see the module docstring
    console: object = None         # rich Console for the live summary and messages

    def __post_init__(self):
        if self.cpus_per_job <= 0 or self.gpus_per_job < 0:
            raise UserError(f"--cpus-per-job must be > 0 and --gpus-per-job >= 0, got {self.cpus_per_job} "
                            f"and {self.gpus_per_job}")
        if self.skip_published and self.publish_csv is None:
            raise UserError("--skip-published goes with --publish (the CSV whose rows are skipped)")
        if self.skip_published and self.plan.grid.overrides:
            raise UserError("--skip-published cannot be combined with --set: leaderboard rows do not record "
                            "settings, so a published row may have been trained with others")
        from rich.console import Console

        self.console = self.console or Console(stderr=True)
        self.jobs = {j.key: j for j in self.plan.jobs}
        self.t0 = time.time()
        self.slots = 1
        self._priors: dict[tuple[str, str], float | None] = {}  # (algo, env) -> seconds, from earlier runs
        self._published: list[dict] | None = None  # publish_csv's rows, read once for the ETA

    # -- events ------------------------------------------------------------------------------

    def say(self, text: str, tag: str = "", color: str = "") -> None:
        """One line of plain text (paths and messages may hold brackets), after a coloured tag."""
        from rich.markup import escape

        head = f"[{color}]{tag}[/{color}] " if tag else ""
        self.console.print(head + escape(text), highlight=False, soft_wrap=True)

    def finish(self, job: Job, state: str, message: str = "") -> None:
        job.state, job.message = state, message
        if job.started is not None:
            job.seconds = time.time() - job.started
        took = f" in {job.seconds:.0f} s" if job.seconds is not None else ""
        if state == "done":
            where = job.run_dir if job.kind == "train" else ", ".join(job.splits)
            self.say(f"{job.key}{took} -> {where}" + (f" ({message})" if message else ""), "done", "green")
        else:
            self.say(f"{job.key}{took}: {message} (log: {job.log_path})", "failed", "red")

    # -- summary -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in ("queued", "running", "done", "failed")}
        for job in self.jobs.values():
            counts[job.state] += 1
        return counts

    def expected_seconds(self, job: Job, done: list[Job]) -> float | None:
        """How long a training job should take: the mean of this sweep's finished jobs (`done`) of the
        same algorithm, else the wall time of that algorithm's finished runs (same profile, same env if
        any) already in the runs folder, else that of its rows in the leaderboard CSV being published
        to (runs made elsewhere, maybe on faster or slower machines), else the mean of `done`; None if none."""
        same = [j.seconds for j in done if j.algo == job.algo]
        if same:
            return sum(same) / len(same)
        prior = self._prior_seconds(job)
        if prior is not None:
            return prior
        return sum(j.seconds for j in done) / len(done) if done else None

    def _prior_seconds(self, job: Job) -> float | None:
        """Mean wall time of finished runs like `job`'s: their result.json files in the runs folder,
        else their rows in `publish_csv`; same env first, then any env (cached)."""
        key = (job.algo, job.env)
        if key not in self._priors:
            self._priors[key] = None
            for same_env in (True, False):
                walls = self._run_walls(job, same_env) or self._published_walls(job, same_env)
                if walls:
                    self._priors[key] = sum(walls) / len(walls)
                    break
        return self._priors[key]

    def _run_walls(self, job: Job, same_env: bool) -> list[float]:
        profile_dir = job.run_dir.parents[2]  # runs/<algo>/<profile>
        walls = []
        for path in profile_dir.glob(f"{job.env if same_env else '*'}/*/seed*/result.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                walls.append(float(json.loads(path.read_text())["wall_time_s"]))
        return walls

    def _published_walls(self, job: Job, same_env: bool) -> list[float]:
        from lompo_bench.leaderboard import csv_store

        if self.publish_csv is None:
            return []
        if self._published is None:
            with contextlib.suppress(OSError, ValueError, UserError):  # a bad CSV fails at publishing, not here
                self._published = csv_store.read_rows(self.publish_csv)
            self._published = self._published or []
        walls = []
        for row in self._published:
            if (row["algorithm"], row["profile"]) == (job.algo, self.plan.grid.profile) and \
                    (row["env"] == job.env or not same_env):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    walls.append(float(row["wall_time_s"]))
        return walls

    def eta_seconds(self) -> float | None:
        """Time left for the training jobs (collection jobs are not estimated), spread over the slots."""
        train = [j for j in self.jobs.values() if j.kind == "train"]
        done = [j for j in train if j.state == "done" and j.seconds and j.published_row is None]
        now, left = time.time(), 0.0
        for job in train:
            if job.state not in ("queued", "running"):
                continue
            expected = self.expected_seconds(job, done)
            if expected is None:
                return None
            left += max(0.0, expected - (now - job.started)) if job.state == "running" and job.started else expected
        return left / max(1, self.slots)

    def summary_values(self) -> dict[str, str]:
        """What the live table and the status line show: counts, elapsed time, ETA."""
        from .runner import format_duration

        c, eta = self.counts(), self.eta_seconds()
        return {"skipped": str(len(self.plan.finished)), **{s: str(c[s]) for s in ("queued", "running", "done", "failed")},
                "elapsed": format_duration(time.time() - self.t0), "ETA": "–" if eta is None else format_duration(eta)}

    def summary(self):
        from rich.table import Table

        values = self.summary_values()
        table = Table()
        for name in values:
            table.add_column(name, justify="right")
        table.add_row(*values.values())
        return table

    def status_line(self) -> str:
        """The summary as one line, for logs (off a terminal rich's live table shows only at the end)."""
        v = self.summary_values()
        return (f"{v['skipped']} skipped, {v['queued']} queued, {v['running']} running, {v['done']} done, "
                f"{v['failed']} failed; elapsed {v['elapsed']}, ETA {v['ETA']}")

    # -- running -----------------------------------------------------------------------------

    def start_ray(self):
        import ray

        address = self.address or os.environ.get("RAY_ADDRESS") or None
        kwargs = dict(runtime_env={"env_vars": worker_env()}, log_to_driver=False,
                      include_dashboard=False, configure_logging=False)
        if address is None and self.local_cpus is not None:
            kwargs["num_cpus"] = self.local_cpus
        if address is not None:
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UserError(f"cannot join the Ray cluster at {address}: {exc}; accepted: the address of a "
                                "running cluster (`ray start --head` prints it), or none for a local Ray") from None
        else:
            for attempt in range(LOCAL_RAY_ATTEMPTS):
                try:
                    ray.init(**kwargs)
                    break
                except Exception as exc:  # Ray gives its raylet 30 s to register: too short on a loaded machine
                    ray.shutdown()
                    if attempt + 1 == LOCAL_RAY_ATTEMPTS:
                        raise UserError(f"could not start a local Ray ({exc}); the machine may be overloaded: "
                                        "retry, or start one with `ray start --head` and pass --address") from None
        cpus = ray.cluster_resources().get("CPU", 1)
        self.slots = max(1, int(cpus // self.cpus_per_job))
        return ray

    def run(self) -> list[Job]:
        """Run every job; returns them (states done/failed)."""
        from rich.live import Live

        for job in self.jobs.values():
            if job.state == "failed":
                self.finish(job, "failed", job.message)
        todo = [j for j in self.jobs.values() if j.state == "queued"]
        if not todo:
            return list(self.jobs.values())
        ray = self.start_ray()
        pending: dict = {}  # Ray's reference of each submitted job -> the job
        try:
            # Start times are advisory: the actor restarts if it dies (Ray's memory monitor kills
            # workers, this one too, when the node runs low, whoever used the memory), and a lost
            # answer only delays a "started" line.
            status = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(StartedJobs).remote()
            # A job whose worker dies (killed, a lost node) runs once more: it resumes where it
            # stopped. A job that fails by itself returns its failure and is not retried.
            remote = ray.remote(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job,
                                max_retries=WORKER_LOSS_RETRIES)(run_job)

            def submit(job: Job) -> None:
                spec = job.spec(self.plan.grid, self.publish_csv, self.skip_published)
                pending[remote.remote(spec, status)] = job

            for job in todo:
                if job.needs is None:
                    submit(job)
            last_status = time.time()
            with Live(self.summary(), console=self.console, refresh_per_second=2, transient=False) as live:
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                    for key, when in started_since_last(ray, status):
                        if self.jobs[key].state == "queued":
                            self.jobs[key].state, self.jobs[key].started = "running", when
                            self.say(key, "started", "cyan")
                    if not self.console.is_terminal and time.time() - last_status >= STATUS_EVERY_S:
                        self.say(self.status_line(), "status", "blue")
                        last_status = time.time()
                    for ref in ready:
                        job = pending.pop(ref)
                        try:
                            outcome = ray.get(ref)
                        except Exception as exc:  # the worker died (killed, out of memory, node lost)
                            outcome = {"ok": False, "message": f"worker lost: {type(exc).__name__}: "
                                                              f"{str(exc).splitlines()[0] if str(exc) else ''}"}
                        if not outcome["ok"]:
                            job.log_path = Path(outcome.get("log") or job.log_path)
                            self.finish(job, "failed", outcome["message"])
                        else:
                            note = outcome.get("published") and f"published: {outcome['published']}"
                            note = note or (outcome.get("refused") and f"not published: {outcome['refused']}")
                            note = note or outcome.get("note")
                            job.published_row = outcome.get("published_row")
                            self.finish(job, "done", note or "")
                        if job.kind == "collect":
                            for other in todo:
                                if other.needs == job.key:
                                    if job.state == "done":
                                        submit(other)
                                    else:
                                        other.log_path = job.log_path  # the collection's log says why
                                        self.finish(other, "failed", f"its dataset was not made ({job.key} failed)")
                    live.update(self.summary())
            if not self.console.is_terminal:
                self.console.print()  # the last summary ends without a newline off a terminal
        except KeyboardInterrupt:
            for ref in list(pending):
                ray.cancel(ref)
            from .runner import Interrupted

            raise Interrupted("sweep interrupted; running jobs keep their last checkpoint: rerun the same "
                              "command to resume") from None
        finally:
            ray.shutdown()
        return list(self.jobs.values())


def publish_finished(run_dirs: list[Path], csv_path: Path) -> tuple[int, list[tuple[Path, str]]]:
    """Publish the grid's finished runs that the CSV lacks (idempotent: a run in it is left alone)."""
    from lompo_bench.leaderboard import csv_store

    known = {row["run_id"] for row in csv_store.read_rows(csv_path)}
    todo = []
    for run_dir in run_dirs:
        try:
            if csv_store.run_id(csv_store.load_result(run_dir)) not in known:
                todo.append(run_dir)
        except csv_store.Refusal:
            todo.append(run_dir)  # publish reports why
    if not todo:
        return 0, []
    report = csv_store.publish(todo, csv_path)
    return len(report.published), report.refused


def grid_rows(run_dirs: list[Path], csv_path: Path | None) -> tuple[list[dict], list[str]]:
    """Leaderboard rows of the grid's finished runs: the published row where there is one, else a
    row made from result.json without re-verifying its dataset (shown with † in the table)."""
    from lompo_bench.leaderboard import csv_store

    published = {r["run_id"]: r for r in csv_store.read_rows(csv_path)} if csv_path else {}
    rows, notes = [], []
    for run_dir in run_dirs:
        try:
            result = csv_store.load_result(run_dir)
            row = published.get(csv_store.run_id(result)) or csv_store.row_from_result(result, run_dir, verify=False)
        except csv_store.Refusal as exc:
            notes.append(f"{run_dir}: {exc.format_message()}")
            continue
        rows.append(row)
    return rows, notes


def finished_runs(jobs: list[Job], plan_: Plan) -> list[Path]:
    """Run directories of the grid that hold a finished run (not the runs skipped as published)."""
    return list(plan_.finished) + [j.run_dir for j in jobs
                                   if j.kind == "train" and j.state == "done" and j.published_row is None]

