"""The run path: `lompo-bench run ALGO --env ENV` as a function.

`run()` finds the dataset, builds the algorithm at a profile (plus `--set` overrides and a
`--steps` budget), trains it with a progress bar, evaluates it in the real environment and
writes a run directory:

    config.json      written first: everything that defines the run (algorithm config,
                     dataset and its checksum, seed, profile, schedule, provenance)
    metrics.csv      training metrics averaged over each logging interval (+ TensorBoard
                     under tb/ if the `tensorboard` package is installed)
    eval.csv         one row per evaluation: step, mean/std return, normalized score, success
    checkpoint.pt    algorithm state + runner counters + RNG states, replaced atomically
    learning_curve.png, and the algorithm's own figures (`sample_figures`)
    result.json      written last: what the leaderboard reads (fields: docs/interfaces.md)

Resume: rerunning the same command (same run directory) continues from `checkpoint.pt` with
the step counter, metrics and evaluation history where the checkpoint left them. Checkpoints
are taken every `checkpoint_every` steps, at most 10 minutes apart, after each evaluation and
on SIGINT/SIGTERM. A run directory whose `result.json` exists is finished and is never
overwritten silently (`overwrite=True` redoes it).

`--steps N` sets the run's length: the algorithm's step fields (`Algorithm.step_fields`, or
failing that its config's `steps` / `*_steps` integer fields) are scaled proportionally so
they add up to N, keeping the ratio between phases (e.g. LOMPO's model and agent phases).
N counts gradient-step iterations; an algorithm may add a few iterations of its own on top
(LOMPO's buffer fills), so the run's `train_steps` can exceed N slightly.
"""

from __future__ import annotations

import csv
import dataclasses
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

DEFAULT_SPLIT = "medium-expert"  # the one split every env has in the paper's Table I
EVAL_EPISODES = {"smoke": 2, "cpu": 10, "paper": 10}
EVALS_PER_RUN = {"smoke": 1, "cpu": 10, "paper": 20}  # evaluations spread over training (the last at the end)
CHECKPOINTS_PER_RUN = 20
CHECKPOINT_MAX_INTERVAL_S = 600.0
PROFILE_NOTES = {
    "smoke": "smoke profile: tiny networks and a few steps to test the pipeline; scores are meaningless",
    "cpu": "cpu profile: batch, widths and steps shrunk to fit about an hour on 2 CPU cores; not the paper's scale",
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
    else:
        path = Path(data).expanduser()
        if not path.exists():
            raise UserError(f"dataset {path} does not exist; accepted: the path of a dataset store (.zarr)")
    dataset = Dataset.open(path)
    if dataset.env != env:
        raise UserError(f"dataset {path} is for env {dataset.env!r}, not {env!r}; pass --env {dataset.env} or another --data")
    if split is not None and dataset.split != split:
        raise UserError(f"dataset {path} is split {dataset.split!r}, not {split!r}; drop --split or pass the matching one")
    return dataset, Path(path)


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


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file, fsync, then rename: a kill never leaves half a checkpoint."""
    import torch

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)


def tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tb"))


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
    """Check the run directory; returns True when a checkpoint of this same run is there to resume."""
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / "config.json").exists():
            raise UserError(f"{run_dir} is not empty and holds no run (no config.json); accepted: a new or empty folder for --out")
        if overwrite:
            shutil.rmtree(run_dir)
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
# The run


def run(algo: str, env: str, split: str | None = None, *, seed: int = 0, profile: str = profiles.DEFAULT_PROFILE,
        data=None, steps: int | None = None, overrides: dict | None = None, out=None, device: str | None = None,
        eval_episodes: int | None = None, eval_every: int | None = None, checkpoint_every: int | None = None,
        overwrite: bool = False, progress: bool = True) -> Path:
    """Train `algo` on the (env, split) dataset, evaluate it, and return the run directory.

    See the module docstring for what the run directory holds and how resume works."""
    import torch
    from tqdm.auto import tqdm

    from lompo_bench import registry
    from lompo_bench.algorithms.base import DataSpec, config_fields
    from lompo_bench.evaluation import evaluate, finite_or_none, make_eval_env

    def say(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)

    profiles.check(profile)
    from lompo_bench import envs

    if env not in envs.ENV_NAMES:
        raise choice_error("env", env, envs.ENV_NAMES)
    cls = registry.get(algo)
    dataset, dataset_path = open_dataset(env, split, profile, data)
    split = dataset.split
    spec = DataSpec.from_dataset(dataset)
    config = cls.config_for(profile, spec)
    config = apply_overrides(config, overrides, algo)
    if steps is not None:
        config = scale_steps(cls, config, int(steps))
        scaled = {n: getattr(config, n) for n in step_field_names(cls, config)}
    device = resolve_device(device)
    eval_episodes = int(eval_episodes or EVAL_EPISODES[profile])
    if eval_episodes < 1:
        raise UserError(f"--eval-episodes must be >= 1, got {eval_episodes}")

    seed_everything(seed)
    agent = cls(config, spec, device=device, seed=seed)
    total = int(agent.total_steps())
    eval_every = int(eval_every or max(1, math.ceil(total / EVALS_PER_RUN[profile])))
    checkpoint_every = int(checkpoint_every or max(1, math.ceil(total / CHECKPOINTS_PER_RUN)))
    if eval_every < 1 or checkpoint_every < 1:
        raise UserError("--eval-every and --checkpoint-every must be >= 1")
    random_return, expert_return = dataset.reference_returns

    run_dir = Path(out).expanduser() if out is not None else default_run_dir(algo, profile, env, split, seed)
    identity = jsonable({
        "algorithm": algo, "env": env, "split": split, "seed": seed, "profile": profile,
        "dataset_checksum": dataset.checksum, "config": config_fields(config), "train_steps": total,
        "eval_episodes": eval_episodes, "eval_every": eval_every,
    })
    resume = prepare_run_dir(run_dir, identity, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"

    start_step, wall_before, evals = 0, 0.0, []
    if resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        agent.load_state_dict(ckpt["algorithm"])
        set_rng_state(ckpt["rng"])
        start_step, wall_before, evals = int(ckpt["step"]), float(ckpt["wall_time_s"]), list(ckpt["evals"])
        say(f"resuming {run_dir} from step {start_step}/{total}")
    else:
        write_json_atomic(run_dir / "config.json", {
            **identity, "dataset_path": str(dataset_path), "device": device,
            "checkpoint_every": checkpoint_every, "profile_note": PROFILE_NOTES[profile],
            "random_return": random_return, "expert_return": expert_return, **provenance.stamp(),
        })

    metrics_log = CsvLog(run_dir / "metrics.csv", ("step", "wall_time_s", "gradient_steps"))
    eval_log = CsvLog(run_dir / "eval.csv", ("step", "mean_return", "std_return", "normalized_score", "success_rate", "episodes"))
    metrics_log.truncate_after(start_step)
    eval_log.truncate_after(start_step)
    tb = tensorboard_writer(run_dir)
    eval_env = make_eval_env(env, image_size=spec.image_shape[0], horizon=spec.horizon, seed=seed)
    eval_seed = 1_000_000 + 1000 * seed  # far from the collectors' seeds, same for every evaluation of a run

    def score(ret):
        if random_return is None or expert_return is None or expert_return == random_return:
            return None
        from lompo_bench.leaderboard.scoring import normalized_score

        return normalized_score(ret, random_return, expert_return)

    t0 = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - t0

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {"algorithm": agent.state_dict(), "step": step, "wall_time_s": wall(),
                                    "evals": evals, "rng": rng_state(), "train_steps": total})

    def run_eval(step: int) -> dict:
        result = evaluate(agent.policy(), eval_env, episodes=eval_episodes, seed=eval_seed)
        row = {"step": step, "mean_return": result["mean_return"], "std_return": result["std_return"],
               "normalized_score": score(result["mean_return"]), "success_rate": result["success_rate"],
               "episodes": eval_episodes, "returns": result["returns"]}
        evals.append(row)
        eval_log.append({k: v for k, v in row.items() if k != "returns"})
        if tb is not None:
            tb.add_scalar("eval/mean_return", row["mean_return"], step)
        return row

    # SIGINT/SIGTERM: finish the current step, checkpoint, stop. A second signal stops at once.
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum

    old_handlers = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, on_signal)
    except ValueError:  # not the main thread: no handlers, checkpoints still happen on schedule
        old_handlers = {}

    say(f"{algo} on {env}/{split} ({profile} profile, seed {seed}, {device}): {total} steps, "
        f"evaluation every {eval_every} steps with {eval_episodes} episodes -> {run_dir}")
    if profile != "paper":
        say(PROFILE_NOTES[profile])
    if steps is not None:
        say(f"--steps {steps}: " + ", ".join(f"{k}={v}" for k, v in scaled.items())
            + (f" ({total} iterations in all)" if total != steps else ""))
    log_every = max(1, min(100, total // 200))
    # Per-key sums and counts: a metric an algorithm reports only on some steps (LOMPO's latent
    # refresh) is averaged over the steps that reported it, not diluted by the others.
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    last_ckpt_time = time.perf_counter()
    eta_probe = {"start": None, "steps": 0, "done": start_step >= total}
    bar = tqdm(total=total, initial=start_step, desc=f"{algo}/{env}", unit="step", file=sys.stderr,
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0, disable=not progress)
    postfix: dict[str, str] = {}
    if evals:
        postfix["eval"] = f"{evals[-1]['mean_return']:.1f}"
    step = start_step
    try:
        while step < total:
            metrics = agent.train_step(dataset, step)
            step += 1
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
            # ETA from the first steps after the first one (which pays for allocation and warm-up).
            if not eta_probe["done"]:
                now = time.perf_counter()
                if eta_probe["start"] is None:
                    eta_probe["start"] = now
                else:
                    eta_probe["steps"] += 1
                    elapsed = now - eta_probe["start"]
                    if step == total:
                        eta_probe["done"] = True  # too short to need an estimate
                    elif elapsed >= 2.0 or eta_probe["steps"] >= 20:
                        eta_probe["done"] = True
                        per_step = elapsed / eta_probe["steps"]
                        # Multi-phase methods (LOMPO: ~1 s model steps, then ~30 ms SAC steps) are
                        # only timed within the phase being run.
                        phase_end = next((int(e) for e in getattr(agent, "phase_ends", ()) if int(e) > step), total)
                        eta = per_step * (phase_end - step)
                        what = (f"the remaining {total - step} training steps" if phase_end == total else
                                f"the remaining {phase_end - step} steps of this phase (of {total} in all; "
                                "later phases run at their own pace)")
                        say(f"ETA {format_duration(eta)} for {what} "
                            f"({per_step * 1000:.0f} ms/step over the first {eta_probe['steps'] + 1} steps, "
                            "evaluation not included)")
                        if profile == "paper" and device == "cpu" and eta > 3 * 3600:
                            say(f"warning: the paper profile on CPU would take about {eta / 3600:.0f} hours; "
                                "use --profile cpu (about an hour) or an accelerator (--device cuda)")
            if step % log_every == 0 or step == total:
                row = {"step": step, "wall_time_s": round(wall(), 3), "gradient_steps": agent.gradient_steps()}
                means = {k: s / counts[k] for k, s in sums.items()}
                row.update(means)
                metrics_log.append(row)
                if tb is not None:
                    for k, v in means.items():
                        tb.add_scalar(f"train/{k}", v, step)
                shown = [k for k in row if "loss" in k][:3] or [k for k in sums][:3]
                postfix.update({k.replace("_loss", ""): f"{row[k]:.3g}" for k in shown})
                sums, counts = {}, {}
                bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if step % eval_every == 0 and step < total:
                row = run_eval(step)
                postfix["eval"] = f"{row['mean_return']:.1f}"
                bar.set_postfix(postfix)
                checkpoint(step)
                last_ckpt_time = time.perf_counter()
            elif step % checkpoint_every == 0 or time.perf_counter() - last_ckpt_time > CHECKPOINT_MAX_INTERVAL_S:
                checkpoint(step)
                last_ckpt_time = time.perf_counter()
            if stop["signal"] is not None:
                checkpoint(step)
                bar.close()
                name = signal.Signals(stop["signal"]).name
                raise Interrupted(f"{name} at step {step}/{total}: checkpoint saved in {ckpt_path}; "
                                  "run the same command again to resume")
        bar.close()
        if not evals or evals[-1]["step"] != total:
            checkpoint(total)  # training done: a kill during the final evaluation does not retrain
            say(f"final evaluation: {eval_episodes} episodes")
            run_eval(total)
    finally:
        bar.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        eval_env.close()
        if tb is not None:
            tb.close()

    final = evals[-1]
    figures = []
    curve = plot_learning_curve(evals, run_dir / "learning_curve.png", f"{algo} on {env}/{split} ({profile}, seed {seed})",
                                (random_return, expert_return))
    if curve is not None:
        figures.append(curve.name)
    try:
        figures += [Path(p).name for p in (agent.sample_figures(dataset, run_dir) or [])]
    except Exception as exc:  # a figure must not cost the result of a finished training run
        say(f"warning: {algo}.sample_figures failed: {type(exc).__name__}: {exc}")
    stamp = provenance.stamp()
    result = {
        "algorithm": algo, "env": env, "split": split, "seed": seed, "profile": profile,
        "raw_return": final["mean_return"], "return_std": final["std_return"],
        "normalized_score": finite_or_none(final["normalized_score"]), "success_rate": final["success_rate"],
        "eval_episodes": eval_episodes, "eval_returns": final["returns"], "eval_seed": eval_seed,
        "gradient_steps": int(agent.gradient_steps()), "train_steps": total, "wall_time_s": round(wall(), 2),
        "dataset_path": str(dataset_path), "dataset_id": f"{env}/{split}@{profile if data is None else dataset_path}",
        "dataset_checksum": dataset.checksum, "random_return": random_return, "expert_return": expert_return,
        "commit": stamp["commit"], "package_version": stamp["package_version"], "hardware": stamp["hardware"],
        "device": device, "timestamp": stamp["created"], "profile_note": PROFILE_NOTES[profile],
        "figures": figures, "config": config_fields(config),
    }
    write_json_atomic(run_dir / "result.json", jsonable(result))
    norm = result["normalized_score"]
    say(f"done: return {final['mean_return']:.1f} ± {final['std_return']:.1f}"
        + (f", normalized score {norm:.1f}" if norm is not None else ", normalized score unknown (no reference returns)")
        + f" -> {run_dir / 'result.json'}")
    return run_dir
