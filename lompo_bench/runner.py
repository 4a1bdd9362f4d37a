"""The run path: `lompo-bench run ALGO --env ENV` as an object a CLI, a test or a sweep drives.

`Trainer(RunSettings(...), callbacks).fit()` (or the `run()` facade) finds the dataset,
builds the algorithm at a profile (plus `--set` overrides and a `--steps` budget), trains it,
evaluates it in the real environment and writes a run directory:

    config.json      written first: everything that defines the run (algorithm config,
                     dataset and its checksum, seed, profile, schedule, provenance)
    metrics.csv      training metrics averaged over each logging interval (+ TensorBoard
                     under tb/ if the `tensorboard` package is installed)
    eval.csv         one row per evaluation: step, mean/std return, normalized score, success
    checkpoint.pt    algorithm state + runner counters + RNG states + callback state,
                     replaced atomically
    learning_curve.png, and the algorithm's own figures (`sample_figures`)
    result.json      written last: what the leaderboard reads (fields: docs/interfaces.md)
    .lock            while a process trains it (see `run_lock.RunLock`)

The loop is split as SB3's learn() and d3rlpy's fit() are: `Trainer.setup` (nothing
written), `open` (lock, check, `resume` or write config.json), `train`, `evaluate`,
`checkpoint`, `finish`, `close`. Logging, TensorBoard, the ETA and the evaluation and
checkpoint schedules are small `Callback`s; the trainer never prints, a `ConsoleReporter`
does (the CLI installs it; a sweep can pass its own callbacks).

Resume: rerunning the same command (same run directory) continues from `checkpoint.pt` with
the step counter, metrics and evaluation history where the checkpoint left them. Checkpoints
are taken every `checkpoint_every` steps, at most 10 minutes apart, after each evaluation and
on SIGINT/SIGTERM. A run directory whose `result.json` exists is finished and is never
overwritten silently (`overwrite=True` redoes it). One process trains a run directory at a
time, also across machines that share the runs folder (`run_lock.RunLock`).

`--steps N` sets the run's length: the algorithm's step fields (`Algorithm.step_fields`, or
failing that its config's `steps` / `*_steps` integer fields) are scaled proportionally so
they add up to N, keeping the ratio between phases (e.g. LOMPO's model and agent phases).
N counts gradient-step iterations; an algorithm may add a few iterations of its own on top
(LOMPO's buffer fills), so the run's `train_steps` can exceed N slightly.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import math
import os
import random
import shutil
import signal
import sys
import time
import types
import typing
from pathlib import Path

import numpy as np

from . import paths, profiles, provenance
from .errors import UserError, choice_error
from .run_lock import RunLock, RunLocked

DEFAULT_SPLIT = "medium-expert"  # the one split every env has in the paper's Table I
EVAL_EPISODES = {"smoke": 2, "cpu": 10, "paper": 10}
EVALS_PER_RUN = {"smoke": 1, "cpu": 10, "paper": 20}  # evaluations spread over training (the last at the end)
CHECKPOINTS_PER_RUN = 20
CHECKPOINT_MAX_INTERVAL_S = 600.0
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)  # the disk's fault, not the run's
PROFILE_NOTES = {
    "smoke": "smoke profile: tiny networks and a few steps to test the pipeline; scores are meaningless",
    "cpu": "cpu profile: batch, widths and steps shrunk to 15-40 min a run on one CPU core; not the paper's scale",
    "paper": "paper profile: the paper's network sizes and step counts (Appendix C / authors' code)",
}
RUN_FILES = ("config.json", "metrics.csv", "eval.csv", "checkpoint.pt", "result.json", "learning_curve.png")


class Interrupted(UserError):
    """SIGINT/SIGTERM during training: the checkpoint is saved; rerun the command to resume."""

    exit_code = 130


# --------------------------------------------------------------------------------------------
# Resolving what to run


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} requested but CUDA is not available here; accepted: cpu")
        return device
    raise choice_error("device", device, ("cpu", "cuda", "cuda:N"))


def collect_command(env: str, split: str, profile: str) -> str:
    return f"lompo-bench collect {env} --split {split} --profile {profile}"


def open_dataset(env: str, split: str | None, profile: str, data: str | os.PathLike | None):
    """The dataset a run trains on, checked against `env` (and `split` where given)."""
    from .store import Dataset

    if data is None:
        split = split or DEFAULT_SPLIT
        path = paths.dataset_path(env, split, profile)
        if not path.exists():
            raise UserError(f"no {profile} dataset for {env}/{split} at {path}; make it with: "
                            f"{collect_command(env, split, profile)} (or pass --data PATH)")
    elif "://" in str(data):  # an fsspec URL (http://, s3://, ...): the store reads it as it is
        path = str(data)
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise UserError(f"dataset {path} does not exist; accepted: the path of a dataset store (.zarr) "
                            "or its URL (http://, s3://, ...)")
    dataset = Dataset.open(path)
    if dataset.env != env:
        raise UserError(f"dataset {path} is for env {dataset.env!r}, not {env!r}; pass --env {dataset.env} or another --data")
    if split is not None and dataset.split != split:
        raise UserError(f"dataset {path} is split {dataset.split!r}, not {split!r}; drop --split or pass the matching one")
    return dataset, path


def default_run_dir(algo: str, profile: str, env: str, split: str, seed: int) -> Path:
    return paths.runs_dir() / algo / profile / env / split / f"seed{seed}"


# --------------------------------------------------------------------------------------------
# Config: --set overrides and --steps


def type_name(tp) -> str:
    """`float`, `Optional[float]`, `Literal['a', 'b']`: a config field's type as users read it."""
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def parse_value(text: str, tp, key: str):
    """`--set key=text` -> a value of the config field's type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(text, arg, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(f"bad value for {key}: {text!r}; accepted: {' or '.join(type_name(a) for a in args)}")
    if origin is typing.Literal:
        for arg in args:
            if str(arg) == text:
                return arg
        raise choice_error(f"value for {key}", text, args)
    if origin in (tuple, list):
        items = [t for t in text.replace(" ", "").strip("()[]").split(",") if t]
        item_type = args[0] if args else str
        values = [parse_value(t, item_type, key) for t in items]
        return tuple(values) if origin is tuple else values
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise UserError(f"bad value for {key}: {text!r}; accepted: true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)  # 1e5 is a fine way to write 100000
            except ValueError:
                value = math.nan
            if math.isfinite(value) and value == int(value):
                return int(value)
            raise UserError(f"bad value for {key}: {text!r}; accepted: an integer") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"bad value for {key}: {text!r}; accepted: a number") from None
    if tp is str:
        return text
    raise UserError(f"setting {key} (type {type_name(tp)}) cannot be set from the command line")


def config_types(config) -> dict:
    hints = typing.get_type_hints(type(config))
    return {f.name: hints.get(f.name, type(getattr(config, f.name))) for f in dataclasses.fields(config)}


def apply_overrides(config, overrides: dict | None, algo_name: str = "the algorithm"):
    """Replace config fields by name. String values are parsed by the field's type, so
    `{"lr": "1e-3"}` (from `--set lr=1e-3`) and `{"lr": 1e-3}` both work."""
    if not overrides:
        return config
    types_ = config_types(config)
    values = {}
    for key, value in overrides.items():
        if key not in types_:
            raise UserError(f"unknown setting {key!r} for {algo_name}; accepted: {', '.join(types_)}")
        values[key] = parse_value(value, types_[key], key) if isinstance(value, str) else value
    try:
        return dataclasses.replace(config, **values)
    except (TypeError, ValueError) as exc:  # a config's own __post_init__ check
        raise UserError(f"bad settings for {algo_name}: {exc}") from None


def parse_settings(settings) -> dict[str, str]:
    """["key=value", ...] (repeatable `--set`) -> {key: value}."""
    out = {}
    for item in settings or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"bad --set {item!r}; accepted: key=value (see `lompo-bench algos list` for the keys)")
        out[key.strip()] = value.strip()
    return out


def step_field_names(cls, config) -> list[str]:
    names = getattr(cls, "step_fields", None)
    if names:
        return list(names)
    return [f.name for f in dataclasses.fields(config)
            if (f.name == "steps" or f.name.endswith("_steps")) and type(getattr(config, f.name)) is int]


def scale_steps(cls, config, steps: int):
    """Scale the algorithm's step fields so they add up to `steps`, keeping their ratio."""
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    names = step_field_names(cls, config)
    current = [int(getattr(config, n)) for n in names]
    if not names or sum(current) <= 0:
        raise UserError(f"{cls.name} has no step count to set; --steps is not supported for it (use --set)")
    total = sum(current)
    scaled = [max(1, round(c * steps / total)) if c > 0 else 0 for c in current]
    largest = int(np.argmax(scaled))
    scaled[largest] = max(1, scaled[largest] + steps - sum(scaled))
    return dataclasses.replace(config, **dict(zip(names, scaled)))


def jsonable(x):
    """Round-trip through JSON types (tuples -> lists), so saved and fresh configs compare equal."""
    return json.loads(json.dumps(x, default=str))


# --------------------------------------------------------------------------------------------
# Files of a run directory


def write_atomic(path: Path, write, mode: str = "w") -> None:
    """`write(file)` into a temporary file, fsync, then rename: a kill never leaves half a file,
    and a failed write (a full disk) leaves the old file and no temporary behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **({"newline": ""} if mode == "w" else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write() names no file: say which
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(data, indent=2, default=str) + "\n"))


class _KeepWriteError:
    """A file whose write() remembers its OSError: torch.save reports a failed write (a full
    disk) as a RuntimeError without the errno."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data):
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self):
        self.file.flush()


def save_checkpoint(path: Path, state: dict) -> None:
    import torch

    def write(f):
        recorder = _KeepWriteError(f)
        try:
            torch.save(state, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    write_atomic(path, write, "wb")


def rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class CsvLog:
    """A CSV whose columns grow when new keys appear (algorithms log different metrics in
    different phases); the file is rewritten with the wider header when that happens."""

    def __init__(self, path: Path, first: tuple[str, ...] = ("step",)):
        self.path, self.first = path, first
        self.columns: list[str] = list(first)
        self.rows: list[dict] = []
        if path.exists():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or first)
                self.rows = list(reader)

    def truncate_after(self, step: int) -> None:
        """Drop rows past a checkpoint: the resumed run writes them again."""
        self.rows = [r for r in self.rows if int(float(r["step"])) <= step]
        self._rewrite()

    def append(self, row: dict) -> None:
        new = [k for k in row if k not in self.columns]
        self.rows.append({k: row[k] for k in row})
        if new or not self.path.exists():
            self.columns += sorted(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        def write(f):
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)

        write_atomic(self.path, write)


def plot_learning_curve(evals: list[dict], path: Path, title: str, references=(None, None)) -> Path | None:
    """Evaluation return against training step, with the dataset's random and expert
    reference returns (the 0 and 100 of the normalized score) as dashed lines where known."""
    if not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([e["step"] for e in evals], dtype=float)
    mean = np.array([e["mean_return"] for e in evals], dtype=float)
    std = np.array([e["std_return"] for e in evals], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, mean, marker="o", label="mean return")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25, label="± std over episodes")
    for value, label, color in zip(references, ("random (score 0)", "expert (score 100)"), ("tab:red", "tab:green")):
        if value is not None:
            ax.axhline(value, linestyle="--", color=color, linewidth=1, label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def first_difference(saved: dict, wanted: dict, prefix: str = ""):
    """(dotted key, saved value, wanted value) of the first key of `wanted` that differs, or None."""
    for key, value in wanted.items():
        if saved.get(key) != value:
            if isinstance(value, dict) and isinstance(saved.get(key), dict):
                return first_difference(saved[key], value, f"{prefix}{key}.")
            return f"{prefix}{key}", saved.get(key), value
    return None


def prepare_run_dir(run_dir: Path, identity: dict, overwrite: bool) -> bool:
    """Check the run directory (its lock is held); returns True when a checkpoint of this same run
    is there to resume."""
    if not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is not a folder; accepted: a new or empty folder for the run")
    entries = [p for p in run_dir.iterdir() if not p.name.startswith(RunLock.name)]
    if entries:
        if not (run_dir / "config.json").exists():
            raise UserError(f"{run_dir} is not empty and holds no run (no config.json); accepted: a new or empty folder for --out")
        if overwrite:
            for entry in entries:  # everything but the lock, which this process holds
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        elif (run_dir / "result.json").exists():
            raise UserError(f"run already finished: {run_dir / 'result.json'}; pass --overwrite to redo it, or --out for a new run dir")
        else:
            saved = json.loads((run_dir / "config.json").read_text())
            diff = first_difference(saved, identity)
            if diff:
                key, old, new = diff
                raise UserError(f"{run_dir} holds a different run ({key}: {json.dumps(old)[:60]} there, "
                                f"{json.dumps(new)[:60]} now); pass --overwrite to replace it, or --out for a new run dir")
            return (run_dir / "checkpoint.pt").exists()
    return False

# --------------------------------------------------------------------------------------------
# The run as an object: settings -> Trainer(setup, resume, train loop, evaluate, checkpoint,
# finish) with hooks (callbacks) for logging, progress, ETA and the evaluation and checkpoint
# schedules, in the manner of SB3's learn() and d3rlpy's fit().


@dataclasses.dataclass
class RunSettings:
    """What a `lompo-bench run` command asks for (None: the profile's default)."""

    algo: str
    env: str
    split: str | None = None
    seed: int = 0
    profile: str = profiles.DEFAULT_PROFILE
    data: typing.Any = None  # a store path or an fsspec URL (anything with "://")
    steps: int | None = None
    overrides: dict | None = None
    out: typing.Any = None
    device: str | None = None
    eval_episodes: int | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    overwrite: bool = False


class Callback:
    """A hook into a run (SB3's BaseCallback, smaller). Every method is optional. Callbacks run
    in the order given, after the trainer's own (metrics log, TensorBoard, ETA, evaluation and
    checkpoint schedules). A callback with state that must survive a resume returns it from
    `state_dict` (saved in checkpoint.pt) and takes it back in `load_state_dict`."""

    def on_start(self, trainer: "Trainer") -> None:
        """Set up and resumed; `trainer.step` is the first step to run from."""

    def on_step(self, trainer: "Trainer", step: int, metrics: dict) -> None:
        """After each `train_step`; `step` counts the steps done."""

    def on_log(self, trainer: "Trainer", step: int, means: dict) -> None:
        """A logging interval's metric means (the row just written to metrics.csv)."""

    def on_evaluation(self, trainer: "Trainer", row: dict) -> None:
        """An evaluation's row (as in eval.csv, plus `returns`)."""

    def on_checkpoint(self, trainer: "Trainer", step: int) -> None:
        """checkpoint.pt was replaced by the state after `step` steps."""

    def on_message(self, trainer: "Trainer", text: str) -> None:
        """A line for the user (the trainer never prints itself)."""

    def on_end(self, trainer: "Trainer", result: dict) -> None:
        """result.json was written."""

    def on_close(self, trainer: "Trainer") -> None:
        """The run stopped (finished, interrupted or failed): release what on_start took."""

    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class MetricsLog(Callback):
    """Averages each metric over the steps that reported it (LOMPO reports its latent reward
    only on buffer-refresh steps; it must not be diluted by the others) and writes a row of
    metrics.csv every `every` steps; `on_log` then tells the other callbacks."""

    def __init__(self, every: int):
        self.every = every
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def on_step(self, trainer, step, metrics):
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.counts[k] = self.counts.get(k, 0) + 1
        if step % self.every == 0 or step == trainer.total:
            means = {k: s / self.counts[k] for k, s in self.sums.items()}
            trainer.metrics_log.append({"step": step, "wall_time_s": round(trainer.wall(), 3),
                                        "gradient_steps": trainer.agent.gradient_steps(), **means})
            self.sums, self.counts = {}, {}
            trainer.emit("on_log", step, means)

    def state_dict(self):  # a half-full interval survives a resume, so its row is exact
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state):
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


class TensorBoardLog(Callback):
    """train/* and eval/* scalars under tb/. A resumed run purges the steps after its
    checkpoint (`purge_step`), which a killed run may have logged already, so every tag's
    steps stay strictly increasing."""

    def __init__(self):
        self.writer = None

    @staticmethod
    def available() -> bool:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            return False
        return True

    def on_start(self, trainer):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(trainer.run_dir / "tb"), purge_step=trainer.step + 1, flush_secs=30)

    def on_log(self, trainer, step, means):
        for k, v in means.items():
            self.writer.add_scalar(f"train/{k}", v, step)

    def on_evaluation(self, trainer, row):
        self.writer.add_scalar("eval/mean_return", row["mean_return"], row["step"])
        if row["normalized_score"] is not None:
            self.writer.add_scalar("eval/normalized_score", row["normalized_score"], row["step"])

    def on_close(self, trainer):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EtaEstimate(Callback):
    """One message with the expected time left, from the first steps after the first one (which
    pays for allocation and warm-up). Multi-phase methods (LOMPO: ~1 s model steps, then ~30 ms
    agent steps) are timed within the phase being run (`Algorithm.phase_ends`)."""

    def __init__(self, probe_s: float = 2.0, probe_steps: int = 20):
        self.probe_s, self.probe_steps = probe_s, probe_steps
        self.start, self.steps, self.done = None, 0, False

    def on_start(self, trainer):
        self.done = trainer.step >= trainer.total

    def on_step(self, trainer, step, metrics):
        if self.done:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = now
            return
        self.steps += 1
        elapsed = now - self.start
        if step == trainer.total:
            self.done = True  # too short to need an estimate
        elif elapsed >= self.probe_s or self.steps >= self.probe_steps:
            self.done = True
            per_step, total = elapsed / self.steps, trainer.total
            phase_end = next((int(e) for e in getattr(trainer.agent, "phase_ends", ()) if int(e) > step), total)
            eta = per_step * (phase_end - step)
            what = (f"the remaining {total - step} training steps" if phase_end == total else
                    f"the remaining {phase_end - step} steps of this phase (of {total} in all; "
                    "later phases run at their own pace)")
            trainer.say(f"ETA {format_duration(eta)} for {what} ({per_step * 1000:.0f} ms/step over the "
                        f"first {self.steps + 1} steps, evaluation not included)")
            if trainer.profile == "paper" and trainer.device == "cpu" and eta > 3 * 3600:
                trainer.say(f"warning: the paper profile on CPU would take about {eta / 3600:.0f} hours; "
                            "use --profile cpu (15-40 min a run) or an accelerator (--device cuda)")


class EvaluationSchedule(Callback):
    """Evaluate every `every` steps (the final evaluation is the trainer's), then checkpoint, so
    a resumed run never repeats an evaluation."""

    def __init__(self, every: int):
        self.every = every

    def on_step(self, trainer, step, metrics):
        if step % self.every == 0 and step < trainer.total:
            trainer.evaluate(step)
            trainer.checkpoint(step)


class CheckpointSchedule(Callback):
    """Checkpoint every `every` steps and at most `max_interval_s` apart (a slow phase must not
    risk more than that much work)."""

    def __init__(self, every: int, max_interval_s: float = CHECKPOINT_MAX_INTERVAL_S):
        self.every, self.max_interval_s = every, max_interval_s

    def on_step(self, trainer, step, metrics):
        if trainer.last_checkpoint_step == step:
            return
        if step % self.every == 0 or time.perf_counter() - trainer.last_checkpoint_time > self.max_interval_s:
            trainer.checkpoint(step)


class ConsoleReporter(Callback):
    """What `lompo-bench run` shows on stderr: a tqdm progress bar with the latest losses and
    evaluation return (`progress=False`: none), and the trainer's messages."""

    def __init__(self, progress: bool = True, file=None):
        self.progress, self.file = progress, file
        self.bar = None
        self.postfix: dict[str, str] = {}

    def _file(self):
        return self.file if self.file is not None else sys.stderr

    def on_start(self, trainer):
        from tqdm.auto import tqdm

        out = self._file()
        self.bar = tqdm(total=trainer.total, initial=trainer.step, desc=f"{trainer.algo}/{trainer.env}", unit="step",
                        file=out, dynamic_ncols=True, mininterval=1.0 if out.isatty() else 30.0,
                        disable=not self.progress)
        if trainer.evals:
            self.postfix["eval"] = f"{trainer.evals[-1]['mean_return']:.1f}"

    def on_step(self, trainer, step, metrics):
        self.bar.update(1)

    def on_log(self, trainer, step, means):
        shown = [k for k in means if "loss" in k][:3] or list(means)[:3]
        self.postfix.update({k.replace("_loss", ""): f"{means[k]:.3g}" for k in shown})
        self.bar.set_postfix(self.postfix, refresh=False)

    def on_evaluation(self, trainer, row):
        self.postfix["eval"] = f"{row['mean_return']:.1f}"
        if self.bar is not None:
            self.bar.set_postfix(self.postfix)

    def on_message(self, trainer, text):
        from tqdm.auto import tqdm

        tqdm.write(text, file=self._file())

    def on_close(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def score_or_reason(ret: float, random_return, expert_return) -> tuple[float | None, str | None]:
    """(normalized score, None), or (None, why it is undefined): D4RL's scale needs an expert
    above the random policy; below it a better policy would score lower."""
    if random_return is None or expert_return is None:
        return None, "the dataset records no random/expert reference returns"
    if not expert_return > random_return:
        return None, (f"the dataset's expert return ({expert_return:.4g}) is not above its random return "
                      f"({random_return:.4g}), so the normalized score is undefined")
    from lompo_bench.evaluation import finite_or_none
    from lompo_bench.leaderboard.scoring import normalized_score

    return finite_or_none(normalized_score(ret, random_return, expert_return)), None


def set_torch_threads(threads: int) -> int:
    """`--threads N`: torch's intra-op threads for this job (see THREADS_HELP), and the heap
    settings of a training process (`allocator.tune`)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be an integer >= 1, got {threads!r}")
    import torch

    from . import allocator

    torch.set_num_threads(threads)
    allocator.tune()
    return threads


THREADS_HELP = ("Torch threads for this job. On shared cores more than one thread per job can be "
                "~100x slower on small ops (the threads wait for each other); raise it only on an idle machine.")


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise UserError(f"--seed must be an integer from 0 to 2**31-1, got {seed!r}")
    return seed


def _positive(option: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{option} must be an integer >= 1, got {value!r}; omit it for the profile's default")
    return value


def _accepted_hint(message: str) -> str:
    low = message.lower()
    if "learning rate" in low:
        return "a learning rate > 0"
    if "negative dimension" in low or "size" in low or "channels" in low:
        return "a positive size"
    if "beta" in low:
        return "a value in [0, 1)"
    if "epsilon" in low or "eps" in low or "weight_decay" in low or "momentum" in low:
        return "a number >= 0"
    return "a value the algorithm's networks and optimizers take"


class Trainer:
    """One training run: `Trainer(settings, callbacks).fit() -> run directory`.

    The steps, each a method: `setup` (resolve the dataset, config and algorithm; nothing is
    written), `open` (lock and check the run directory, then `resume` from its checkpoint or
    write config.json), `train` (the loop: `train_step`, then every callback's `on_step`),
    `evaluate(step)`, `checkpoint(step)`, `finish` (final evaluation, figures, result.json
    last) and `close`. The trainer never prints: messages go to the callbacks' `on_message`
    (`ConsoleReporter` prints them)."""

    def __init__(self, settings: RunSettings, callbacks: typing.Sequence[Callback] = ()):
        self.settings = settings
        self.user_callbacks = list(callbacks)
        self.callbacks: list[Callback] = list(callbacks)  # the trainer's own are added by `open`
        self.lock: RunLock | None = None
        self.eval_envs: list = []  # one made by `open`, the rest by the first evaluation (one per episode side by side)
        self.stop_signal = None
        self._t0 = time.perf_counter()
        self.wall_before = 0.0

    # -- messages and hooks
    def emit(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def say(self, text: str) -> None:
        self.emit("on_message", text)

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self._t0

    # -- set-up: everything decided, nothing written
    def setup(self) -> "Trainer":
        from lompo_bench import envs, registry
        from lompo_bench.algorithms.base import DataSpec, config_fields

        s = self.settings
        self.algo, self.env, self.profile = s.algo, s.env, profiles.check(s.profile)
        self.seed = check_seed(s.seed)
        if s.env not in envs.ENV_NAMES:
            raise choice_error("env", s.env, envs.ENV_NAMES)
        self.cls = registry.get(s.algo)
        for option, value in (("--eval-episodes", s.eval_episodes), ("--eval-every", s.eval_every),
                              ("--checkpoint-every", s.checkpoint_every)):
            if value is not None:
                _positive(option, value)
        self.dataset, self.dataset_path = open_dataset(s.env, s.split, s.profile, s.data)
        self.split = self.dataset.split
        self.spec = DataSpec.from_dataset(self.dataset)
        config = apply_overrides(self.cls.config_for(s.profile, self.spec), s.overrides, s.algo)
        if s.steps is not None:
            config = scale_steps(self.cls, config, int(s.steps))
        self.config = config
        self.device = resolve_device(s.device)
        self.eval_episodes = EVAL_EPISODES[s.profile] if s.eval_episodes is None else s.eval_episodes
        seed_everything(self.seed)
        self.agent = self.build_algorithm()
        self.total = int(self.agent.total_steps())
        self.eval_every = (max(1, math.ceil(self.total / EVALS_PER_RUN[s.profile])) if s.eval_every is None
                           else s.eval_every)
        self.checkpoint_every = (max(1, math.ceil(self.total / CHECKPOINTS_PER_RUN)) if s.checkpoint_every is None
                                 else s.checkpoint_every)
        self.random_return, self.expert_return = self.dataset.reference_returns
        self.run_dir = (Path(s.out).expanduser() if s.out is not None
                        else default_run_dir(s.algo, s.profile, s.env, self.split, self.seed))
        self.identity = jsonable({
            "algorithm": s.algo, "env": s.env, "split": self.split, "seed": self.seed, "profile": s.profile,
            "dataset_checksum": self.dataset.checksum, "config": config_fields(config), "train_steps": self.total,
            "eval_episodes": self.eval_episodes, "eval_every": self.eval_every,
        })
        self.eval_seed = 1_000_000 + 1000 * self.seed  # far from the collectors' seeds, same for every evaluation
        return self

    def build_algorithm(self):
        """The algorithm from its config; a value its optimizers or networks reject (a negative
        learning rate, a zero width) is a one-line error naming the --set that caused it."""
        s = self.settings
        try:
            return self.cls(self.config, self.spec, device=self.device, seed=self.seed)
        except (ValueError, RuntimeError, TypeError) as exc:
            message = " ".join(str(exc).split())[:200]
            culprits = self._rejected_settings()
            defaults = self.cls.config_for(s.profile, self.spec)
            if culprits:
                named = ", ".join(f"--set {k}={s.overrides[k]} (default {getattr(defaults, k)!r})" for k in culprits)
                raise UserError(f"{named} rejected by {s.algo}: {message}; accepted: {_accepted_hint(message)}") from None
            raise  # not caused by a setting: a bug, keep the traceback

    def _rejected_settings(self) -> list[str]:
        """The --set keys that fail on their own (each tried alone on the profile's config)."""
        s = self.settings
        if not s.overrides:
            return []
        base = self.cls.config_for(s.profile, self.spec)
        if s.steps is not None:
            base = scale_steps(self.cls, base, int(s.steps))
        def fails(config) -> bool:
            try:
                self.cls(config, self.spec, device=self.device, seed=self.seed)
            except (ValueError, RuntimeError, TypeError):
                return True
            return False

        if fails(base):
            return []  # the algorithm fails without any --set: not the user's doing
        culprits = [key for key, value in s.overrides.items() if fails(apply_overrides(base, {key: value}, s.algo))]
        return culprits or list(s.overrides)  # only the combination fails

    # -- the run directory: lock, check, resume or start
    def open(self) -> "Trainer":
        created = not self.run_dir.exists()
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise UserError(f"--out {self.run_dir} is a file; accepted: a new or empty folder for the run")
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, no permission, a full disk
            raise UserError(f"cannot make the run folder {self.run_dir}: {exc.strerror or exc}; "
                            "accepted: --out in a writable folder") from None
        try:
            self.lock = RunLock(self.run_dir).acquire()
            resuming = prepare_run_dir(self.run_dir, self.identity, self.settings.overwrite)
        except UserError:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
            if created:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        self.step, self.evals, self.last_checkpoint_step = 0, [], None
        self.callbacks = [MetricsLog(max(1, min(100, self.total // 200)))]
        if TensorBoardLog.available():
            self.callbacks.append(TensorBoardLog())
        self.callbacks += [EtaEstimate(), EvaluationSchedule(self.eval_every), CheckpointSchedule(self.checkpoint_every),
                           *self.user_callbacks]
        if resuming:
            self.resume()
        else:
            self.write_config()
        self.metrics_log = CsvLog(self.run_dir / "metrics.csv", ("step", "wall_time_s", "gradient_steps"))
        self.eval_log = CsvLog(self.run_dir / "eval.csv", ("step", "mean_return", "std_return", "normalized_score",
                                                           "success_rate", "episodes"))
        self.metrics_log.truncate_after(self.step)  # rows a killed run wrote past its checkpoint
        self.eval_log.truncate_after(self.step)
        self.eval_envs = [self.make_eval_env()]  # made now, so an env that cannot be made fails before training
        self.last_checkpoint_time = time.perf_counter()
        self._t0 = time.perf_counter()
        return self

    def write_config(self) -> None:
        import torch

        write_json_atomic(self.run_dir / "config.json", {
            **self.identity, "dataset_path": str(self.dataset_path), "device": self.device,
            "checkpoint_every": self.checkpoint_every, "threads": torch.get_num_threads(),
            "profile_note": PROFILE_NOTES[self.profile], "random_return": self.random_return,
            "expert_return": self.expert_return, **provenance.stamp(),
        })

    def resume(self) -> None:
        import torch

        ckpt = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        self.agent.load_state_dict(ckpt["algorithm"])
        set_rng_state(ckpt["rng"])
        self.step, self.wall_before, self.evals = int(ckpt["step"]), float(ckpt["wall_time_s"]), list(ckpt["evals"])
        self.last_checkpoint_step = self.step
        for key, state in ckpt.get("callbacks", {}).items():
            callback = self._callback_states().get(key)
            if callback is not None:
                callback.load_state_dict(state)
        self.say(f"resuming {self.run_dir} from step {self.step}/{self.total}")

    def _callback_states(self) -> dict[str, Callback]:
        return {f"{i}:{type(c).__name__}": c for i, c in enumerate(self.callbacks)}

    # -- the pieces the loop and the schedules call
    def checkpoint(self, step: int) -> None:
        if self.lock is not None and self.lock.lost:
            raise RunLocked(f"the lock {self.lock.path} was taken over by another process (this one looked "
                            f"stale); stopping without writing, so the run is not trained twice")
        states = {key: c.state_dict() for key, c in self._callback_states().items()}
        save_checkpoint(self.checkpoint_path, {
            "algorithm": self.agent.state_dict(), "step": step, "wall_time_s": self.wall(), "evals": self.evals,
            "rng": rng_state(), "train_steps": self.total,
            "callbacks": {k: v for k, v in states.items() if v is not None}})
        self.last_checkpoint_step, self.last_checkpoint_time = step, time.perf_counter()
        self.emit("on_checkpoint", step)

    def make_eval_env(self):
        from lompo_bench.evaluation import make_eval_env

        return make_eval_env(self.env, image_size=self.spec.image_shape[0], horizon=self.spec.horizon, seed=self.seed)

    def evaluate(self, step: int) -> dict:
        from lompo_bench.evaluation import evaluate, side_by_side

        policy = self.agent.policy()
        while len(self.eval_envs) < side_by_side(policy, self.eval_episodes):
            self.eval_envs.append(self.make_eval_env())
        result = evaluate(policy, self.eval_envs, episodes=self.eval_episodes, seed=self.eval_seed)
        score, _ = score_or_reason(result["mean_return"], self.random_return, self.expert_return)
        row = {"step": step, "mean_return": result["mean_return"], "std_return": result["std_return"],
               "normalized_score": score, "success_rate": result["success_rate"],
               "episodes": self.eval_episodes, "returns": result["returns"]}
        self.evals.append(row)
        self.eval_log.append({k: v for k, v in row.items() if k != "returns"})
        self.emit("on_evaluation", row)
        return row

    def train(self) -> None:
        """The loop. SIGINT/SIGTERM (see `fit`) stop it after the current step, with a checkpoint."""
        while self.step < self.total:
            metrics = self.agent.train_step(self.dataset, self.step)
            self.step += 1
            self.emit("on_step", self.step, metrics)
            if self.stop_signal is not None:
                if self.last_checkpoint_step != self.step:
                    self.checkpoint(self.step)
                name = signal.Signals(self.stop_signal).name
                raise Interrupted(f"{name} at step {self.step}/{self.total}: checkpoint saved in "
                                  f"{self.checkpoint_path}; run the same command again to resume")

    def finish(self) -> dict:
        """The final evaluation (unless the last one was at the end), figures, result.json."""
        if not self.evals or self.evals[-1]["step"] != self.total:
            self.checkpoint(self.total)  # training done: a kill during the final evaluation does not retrain
            self.say(f"final evaluation: {self.eval_episodes} episodes")
            self.evaluate(self.total)
        figures = []
        curve = plot_learning_curve(self.evals, self.run_dir / "learning_curve.png",
                                    f"{self.algo} on {self.env}/{self.split} ({self.profile}, seed {self.seed})",
                                    (self.random_return, self.expert_return))
        if curve is not None:
            figures.append(curve.name)
        try:
            figures += [Path(p).name for p in (self.agent.sample_figures(self.dataset, self.run_dir) or [])]
        except Exception as exc:  # a figure must not cost the result of a finished training run
            self.say(f"warning: {self.algo}.sample_figures failed: {type(exc).__name__}: {exc}")
        result = jsonable(self.result(figures))
        write_json_atomic(self.run_dir / "result.json", result)
        self.emit("on_end", result)
        norm = result["normalized_score"]
        final = self.evals[-1]
        self.say(f"done: return {final['mean_return']:.1f} ± {final['std_return']:.1f}"
                 + (f", normalized score {norm:.1f}" if norm is not None else
                    f", no normalized score ({result['normalized_score_reason']})")
                 + f" -> {self.run_dir / 'result.json'}")
        return result

    def summary(self, evals: list[dict]) -> dict:
        """Mean return and its normalized score over some evaluations."""
        raw = float(np.mean([e["mean_return"] for e in evals]))
        return {"steps": [e["step"] for e in evals], "raw_return": raw,
                "normalized_score": score_or_reason(raw, self.random_return, self.expert_return)[0]}

    def result(self, figures: list[str]) -> dict:
        """result.json: the final evaluation is the score (what the leaderboard uses); `best` and
        `last3_mean` over the evaluations show how noisy it is."""
        import torch

        from lompo_bench.algorithms.base import config_fields

        final = self.evals[-1]
        score, reason = score_or_reason(final["mean_return"], self.random_return, self.expert_return)
        best = max(self.evals, key=lambda e: e["mean_return"])
        stamp = provenance.stamp()
        return {
            "algorithm": self.algo, "env": self.env, "split": self.split, "seed": self.seed, "profile": self.profile,
            "raw_return": final["mean_return"], "return_std": final["std_return"],
            "normalized_score": score, "normalized_score_reason": reason,
            "best": {"step": best["step"], "raw_return": best["mean_return"], "normalized_score": best["normalized_score"]},
            "last3_mean": self.summary(self.evals[-3:]),
            "success_rate": final["success_rate"], "eval_episodes": self.eval_episodes,
            "eval_returns": final["returns"], "eval_seed": self.eval_seed,
            "gradient_steps": int(self.agent.gradient_steps()), "train_steps": self.total,
            "wall_time_s": round(self.wall(), 2), "dataset_path": str(self.dataset_path),
            "dataset_id": f"{self.env}/{self.split}@{self.profile if self.settings.data is None else self.dataset_path}",
            "dataset_checksum": self.dataset.checksum, "random_return": self.random_return,
            "expert_return": self.expert_return, "commit": stamp["commit"],
            "package_version": stamp["package_version"], "hardware": stamp["hardware"], "device": self.device,
            "threads": torch.get_num_threads(), "timestamp": stamp["created"],
            "profile_note": PROFILE_NOTES[self.profile], "figures": figures, "config": config_fields(self.config),
        }

    def announce(self) -> None:
        s = self.settings
        self.say(f"{self.algo} on {self.env}/{self.split} ({self.profile} profile, seed {self.seed}, {self.device}): "
                 f"{self.total} steps, evaluation every {self.eval_every} steps with {self.eval_episodes} episodes "
                 f"-> {self.run_dir}")
        if self.profile != "paper":
            self.say(PROFILE_NOTES[self.profile])
        if s.steps is not None:
            scaled = {n: getattr(self.config, n) for n in step_field_names(self.cls, self.config)}
            self.say(f"--steps {s.steps}: " + ", ".join(f"{k}={v}" for k, v in scaled.items())
                     + (f" ({self.total} iterations in all)" if self.total != s.steps else ""))

    def close(self) -> None:
        for callback in self.callbacks:
            callback.on_close(self)
        for env in self.eval_envs:
            env.close()
        self.eval_envs = []
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- all of it
    def fit(self) -> Path:
        """setup -> open (lock; resume or config.json) -> train -> finish; returns the run directory.
        SIGINT/SIGTERM: the current step finishes, a checkpoint is written, `Interrupted` (exit
        130) is raised; a second signal stops at once."""
        self.setup()
        try:
            self.open()
            restore = self._install_signal_handlers()
            try:
                self.emit("on_start")
                self.announce()
                self.train()
                self.finish()
            except KeyboardInterrupt:  # a second signal: stopped at once, without a new checkpoint
                kept = (f"the checkpoint of step {self.last_checkpoint_step} is kept" if self.last_checkpoint_step
                        else "no checkpoint was written yet")
                raise Interrupted(f"stopped at once at step {self.step}/{self.total} (a second signal); {kept}; "
                                  "run the same command again to resume") from None
            finally:
                restore()
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                raise
            raise UserError(f"cannot write {exc.filename or self.run_dir}: {exc.strerror}; the last checkpoint is "
                            "kept: free space (or make the folder writable) and run the same command again to "
                            "resume") from None
        finally:
            self.close()
        return self.run_dir

    def _install_signal_handlers(self):
        def on_signal(signum, frame):
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum

        old = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread (e.g. a Ray actor): checkpoints still happen on schedule
            pass

        def restore():
            for sig, handler in old.items():
                signal.signal(sig, handler)

        return restore


def run(algo: str, env: str, split: str | None = None, *, seed: int = 0, profile: str = profiles.DEFAULT_PROFILE,
        data=None, steps: int | None = None, overrides: dict | None = None, out=None, device: str | None = None,
        eval_episodes: int | None = None, eval_every: int | None = None, checkpoint_every: int | None = None,
        overwrite: bool = False, progress: bool = True, callbacks: typing.Sequence[Callback] | None = None) -> Path:
    """Train `algo` on the (env, split) dataset, evaluate it, and return the run directory.

    `callbacks`: hooks into the run (default: a `ConsoleReporter` printing to stderr, with a
    progress bar unless `progress=False`). See the module docstring for the run directory."""
    settings = RunSettings(algo=algo, env=env, split=split, seed=seed, profile=profile, data=data, steps=steps,
                           overrides=overrides, out=out, device=device, eval_episodes=eval_episodes,
                           eval_every=eval_every, checkpoint_every=checkpoint_every, overwrite=overwrite)
    if callbacks is None:
        callbacks = [ConsoleReporter(progress=progress)]
    return Trainer(settings, callbacks).fit()
