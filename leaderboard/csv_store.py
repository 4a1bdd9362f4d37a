"""The leaderboard CSV: one row per evaluated run, appended by `publish`, never rewritten.

Publishing a run directory reads its ``result.json`` (fields: docs/interfaces.md, "Runs") and
turns it into one row, or refuses it with a one-line reason:

- no ``result.json``, unreadable JSON, a missing field or a value of the wrong kind;
- a row already published (same ``run_id``, in the CSV or earlier in the same call);
- its dataset: when the store named by ``dataset_path`` is on this machine it is opened and
  re-verified (``lompo_bench.store.verify``: completeness and content checksums), and must be
  the dataset the run used (checksum, env, split, reference returns). When the store is *not*
  on this machine the run is refused unless ``verify=False`` (``--no-verify``), which trusts
  the run's recorded checksum and reference returns; the row's ``dataset_verified`` column
  says which happened.
- a normalized score that disagrees with the one recomputed from ``raw_return`` and the
  dataset's reference returns (the row always stores the recomputed score).

``run_id`` is a hash of the run's identity (algorithm, env, split, seed, profile, dataset
checksum, commit, timestamp), so the same run published twice is caught even from a copy of
its directory.

Writes are atomic: the existing file's bytes and the new rows go to a temporary file in the
same directory, which is flushed, fsynced and renamed over the CSV (then the directory is
fsynced). A publish killed at any point leaves the CSV either as it was or with all the new
rows, never half a row. Concurrent publishes are serialized by an ``flock`` on the directory
(across processes of one machine; across machines only where the shared filesystem makes
flock coherent between its clients, as CephFS does; Linux NFS emulates flock with byte-range
locks, which a directory opened read-only may refuse: the publish then stops with a one-line
error rather than write unlocked). The rewritten CSV keeps its mode and owner, and the
temporary file a killed publish leaves is removed by the next publish or `leaderboard` command.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import io
import json
import math
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from lompo_bench import paths
from lompo_bench.errors import UserError
from lompo_bench.profiles import PROFILES

from .scoring import normalized_score

COLUMNS = (
    "run_id", "algorithm", "env", "split", "seed", "profile",
    "normalized_score", "raw_return", "return_std", "success_rate", "eval_episodes",
    "gradient_steps", "random_return", "expert_return",
    "dataset_id", "dataset_checksum", "dataset_verified",
    "commit", "hardware", "device", "wall_time_s", "timestamp",
)
INT_COLUMNS = ("seed", "eval_episodes", "gradient_steps")
FLOAT_COLUMNS = ("normalized_score", "raw_return", "return_std", "success_rate", "random_return",
                 "expert_return", "wall_time_s")
NULLABLE_COLUMNS = ("success_rate",)  # tasks without a success signal (walker) record none

# result.json fields the row is built from; every one must be present (success_rate may be null).
RESULT_FIELDS = (
    "algorithm", "env", "split", "seed", "profile", "raw_return", "return_std",
    "normalized_score", "success_rate", "eval_episodes", "gradient_steps", "wall_time_s",
    "dataset_path", "dataset_id", "dataset_checksum", "random_return", "expert_return",
    "commit", "hardware", "device", "timestamp",
)
IDENTITY_FIELDS = ("algorithm", "env", "split", "seed", "profile", "dataset_checksum", "commit", "timestamp")
SCORE_TOLERANCE = 1e-6  # absolute, in normalized-score points (floats written by JSON round-trip)


def default_csv_path() -> Path:
    """``leaderboard/leaderboard.csv`` of the source checkout; ``$LOMPO_BENCH_HOME`` otherwise."""
    root = paths.repo_root()
    if root is not None and (root / "leaderboard").is_dir():
        return root / "leaderboard" / "leaderboard.csv"
    return paths.home() / "leaderboard.csv"


def run_id(result: dict) -> str:
    """Short stable hash of a run's identity."""
    identity = json.dumps({k: result.get(k) for k in IDENTITY_FIELDS}, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class Refusal(UserError):
    """A run that cannot be published; the message is the one-line reason."""


# ---------------------------------------------------------------------------------------------
# reading result.json and checking it


def load_result(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    path = run_dir / "result.json"
    if not run_dir.is_dir():
        raise Refusal(f"{run_dir} is not a directory; accepted: a run directory containing result.json")
    if not path.is_file():
        raise Refusal(f"no result.json in {run_dir} (unfinished run?); accepted: a run directory "
                      "whose run finished")
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise Refusal(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(result, dict):
        raise Refusal(f"{path} holds {type(result).__name__}; accepted: a JSON object")
    return result


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fields(result: dict) -> None:
    """Refuse a result.json with missing fields or values of the wrong kind."""
    if any(k in result and result[k] is None for k in ("random_return", "expert_return")):
        raise Refusal("run has no normalized score: its dataset records no random/expert reference "
                      "returns; accepted: runs on datasets with reference returns")
    if "normalized_score" in result and result["normalized_score"] is None:
        random, expert = result.get("random_return"), result.get("expert_return")
        why = (f"its dataset's expert return equals its random return ({expert})" if random == expert
               else "result.json records none")
        raise Refusal(f"run has no normalized score: {why}; accepted: runs on datasets whose expert "
                      "return differs from the random one")
    random, expert = result.get("random_return"), result.get("expert_return")
    if isinstance(random, (int, float)) and isinstance(expert, (int, float)) and expert < random:
        # D4RL's scale needs expert above random; below it, a better policy would score lower.
        raise Refusal(f"its dataset's expert return ({expert:.4g}) is below its random return ({random:.4g}), "
                      "so the normalized score is meaningless; accepted: runs on datasets whose SAC expert "
                      "beats the random policy (smoke-profile SAC does not learn)")
    missing = [k for k in RESULT_FIELDS if k not in result or (result[k] is None and k not in NULLABLE_COLUMNS)]
    if missing:
        raise Refusal(f"result.json lacks {', '.join(missing)}; accepted: every field of "
                      "docs/interfaces.md 'Runs'")
    for key in ("algorithm", "env", "split", "dataset_id", "dataset_checksum", "commit", "hardware",
                "device", "dataset_path", "timestamp"):
        value = result[key]
        if not isinstance(value, str) or not value.strip() or "\n" in value:
            raise Refusal(f"result.json field {key} is {value!r}; accepted: a non-empty one-line string")
    if result["profile"] not in PROFILES:
        raise Refusal(f"result.json profile is {result['profile']!r}; accepted: {', '.join(PROFILES)}")
    if not _is_int(result["seed"]):
        raise Refusal(f"result.json seed is {result['seed']!r}; accepted: an integer")
    if not _is_int(result["eval_episodes"]) or result["eval_episodes"] < 1:
        raise Refusal(f"result.json eval_episodes is {result['eval_episodes']!r}; accepted: an integer >= 1")
    if not _is_int(result["gradient_steps"]) or result["gradient_steps"] < 0:
        raise Refusal(f"result.json gradient_steps is {result['gradient_steps']!r}; accepted: an integer >= 0")
    for key in ("raw_return", "return_std", "normalized_score", "random_return", "expert_return",
                "wall_time_s"):
        if not _finite(result[key]):
            raise Refusal(f"result.json field {key} is {result[key]!r}; accepted: a finite number")
    if result["success_rate"] is not None and not (_finite(result["success_rate"])
                                                   and 0.0 <= result["success_rate"] <= 1.0):
        raise Refusal(f"result.json success_rate is {result['success_rate']!r}; accepted: null or 0..1")
    try:
        _dt.datetime.fromisoformat(result["timestamp"])
    except ValueError as exc:
        raise Refusal(f"result.json timestamp is {result['timestamp']!r}; accepted: ISO 8601") from exc


def _resolve_dataset(result: dict, run_dir: Path) -> Path:
    path = Path(result["dataset_path"]).expanduser()
    if not path.is_absolute() and not path.exists() and (run_dir / path).exists():
        path = run_dir / path
    return path


def verify_store(path: Path):
    """Open and fully re-verify a dataset store (the expensive part: reads every chunk). Any
    problem refuses the run: a damaged store can fail in ways no check anticipated (a decode
    error, unreadable metadata), and none of them may let a score through."""
    from lompo_bench import store  # the store is only needed when verifying

    try:
        dataset = store.Dataset.open(path)
    except UserError as exc:
        raise Refusal(f"dataset {path} is unusable: {exc.format_message()}") from exc
    except Exception as exc:
        raise Refusal(f"dataset {path} is unusable: {type(exc).__name__}: {exc}") from exc
    try:
        problems = store.verify(path)
    except Exception as exc:
        problems = [f"verification stopped: {type(exc).__name__}: {exc}"]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise Refusal(f"dataset {path} fails verification: {problems[0]}{more}")
    return dataset


def match_dataset(dataset, path: Path, result: dict) -> tuple[float, float]:
    """Check a verified dataset is the one the run used; its (random, expert) reference returns."""
    if dataset.checksum != result["dataset_checksum"]:
        raise Refusal(f"dataset {path} has checksum {dataset.checksum}, the run used "
                      f"{result['dataset_checksum']}; accepted: the dataset the run trained on")
    if (dataset.env, dataset.split) != (result["env"], result["split"]):
        raise Refusal(f"dataset {path} is {dataset.env}/{dataset.split}, the run says "
                      f"{result['env']}/{result['split']}")
    random, expert = dataset.reference_returns
    if random is None or expert is None:
        raise Refusal(f"dataset {path} has no reference returns, so no normalized score; accepted: "
                      "a dataset whose collector recorded random and expert returns")
    for name, stored, recorded in (("random", random, result["random_return"]),
                                   ("expert", expert, result["expert_return"])):
        if not math.isclose(stored, recorded, rel_tol=1e-9, abs_tol=1e-9):
            raise Refusal(f"run records {name} return {recorded}, its dataset {path} stores {stored}")
    return float(random), float(expert)


def row_from_result(result: dict, run_dir: Path, *, verify: bool = True,
                    verified_cache: dict | None = None) -> dict:
    """The CSV row of one finished run, or a `Refusal`. ``verified_cache`` maps a dataset path
    to its verification outcome, so a batch verifies each dataset once."""
    check_fields(result)
    verified = False
    random, expert = float(result["random_return"]), float(result["expert_return"])
    if verify:
        path = _resolve_dataset(result, Path(run_dir))
        if not path.exists():
            raise Refusal(f"dataset {path} is not on this machine, so it cannot be re-verified; "
                          "publish where the dataset is, or pass --no-verify to trust the run's record")
        cache = verified_cache if verified_cache is not None else {}
        key = str(path.resolve())
        if key not in cache:
            try:
                cache[key] = verify_store(path)
            except Refusal as exc:
                cache[key] = exc
        if isinstance(cache[key], Refusal):
            raise Refusal(cache[key].format_message())
        random, expert = match_dataset(cache[key], path, result)
        verified = True
    try:
        score = normalized_score(result["raw_return"], random, expert)
    except UserError as exc:
        raise Refusal(exc.format_message()) from exc
    if abs(score - result["normalized_score"]) > SCORE_TOLERANCE:
        raise Refusal(f"result.json normalized_score {result['normalized_score']} disagrees with "
                      f"{score:.6f} recomputed from raw_return {result['raw_return']} and reference "
                      f"returns ({random}, {expert})")
    row = {k: result[k] for k in COLUMNS if k in result}
    row.update(run_id=run_id(result), normalized_score=score, random_return=random,
               expert_return=expert, dataset_verified=verified)
    return row


# ---------------------------------------------------------------------------------------------
# the CSV file


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest text that reads back to the same float
    return str(value)


def _serialize(rows, header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_format(row.get(k)) for k in COLUMNS])
    return buffer.getvalue()


def _parse(row: dict, where: str) -> dict:
    out = dict(row)
    try:
        for key in INT_COLUMNS:
            out[key] = int(row[key])
        for key in FLOAT_COLUMNS:
            out[key] = None if (row[key] == "" and key in NULLABLE_COLUMNS) else float(row[key])
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}; accepted: rows written by `lompo-bench leaderboard publish`") from exc
    if row["dataset_verified"] not in ("true", "false"):
        raise UserError(f"{where}: dataset_verified is {row['dataset_verified']!r}; accepted: true, false")
    out["dataset_verified"] = row["dataset_verified"] == "true"
    return out


def read_rows(csv_path: Path | str | None = None) -> list[dict]:
    """Every published row, typed (ints, floats, None for an empty success_rate). A missing file
    has no rows."""
    csv_path = Path(csv_path) if csv_path is not None else default_csv_path()
    if not csv_path.exists():
        return []
    text = csv_path.read_text()
    if not text.strip():
        return []
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise UserError(f"{csv_path} has columns {', '.join(reader.fieldnames or ())}; accepted: "
                        f"{', '.join(COLUMNS)}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if None in row or any(v is None for v in row.values()):
            raise UserError(f"{csv_path}:{line}: wrong number of fields; accepted: {len(COLUMNS)} per row")
        rows.append(_parse(row, f"{csv_path}:{line}"))
    return rows


def ensure_csv(csv_path: Path | str) -> Path:
    """Create an empty leaderboard (just the header) if there is none."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        append_rows(csv_path, [])
    return csv_path


@contextlib.contextmanager
def _locked(directory: Path):
    """Serialize writers of one directory's CSVs (flock on the directory itself: no lock file).
    Holding it, the caller also removes temporary files that killed writers left behind."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. a network filesystem without flock support
            raise UserError(f"cannot lock {directory} for publishing ({exc.strerror}); accepted: a "
                            "directory on a filesystem with flock (a local disk; shared: e.g. CephFS)") from None
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _temp_prefix(csv_path: Path) -> str:
    return f".{csv_path.name}."


def _remove_stale_temps(csv_path: Path) -> list[Path]:
    """Remove the temporary files of killed publishes. Must be called with the directory lock
    held: a live writer only has a temporary file while it holds that lock, so every one found
    then belongs to a writer that died."""
    removed = []
    for tmp in csv_path.parent.glob(f"{_temp_prefix(csv_path)}*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or a directory we may not write
            tmp.unlink()
            removed.append(tmp)
    return removed


def clean_stale_temps(csv_path: Path | str | None = None) -> list[Path]:
    """What `leaderboard` commands call first: remove temporary files a killed publish left
    beside the CSV (only stale ones: the lock waits for a live publisher to finish)."""
    csv_path = Path(csv_path) if csv_path is not None else default_csv_path()
    if not csv_path.parent.is_dir() or not any(csv_path.parent.glob(f"{_temp_prefix(csv_path)}*.tmp")):
        return []
    with _locked(csv_path.parent):
        return _remove_stale_temps(csv_path)


def _replace(src: str, dst: Path) -> None:
    """The commit point of a publish (a separate function so tests can interrupt just before it)."""
    os.replace(src, dst)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file here (0666 less the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomic(csv_path: Path, new_rows: list[dict]) -> None:
    """Existing bytes + new rows -> temp file in the same directory -> fsync -> rename. Must be
    called with the directory lock held. The new file keeps the CSV's mode and owner (mkstemp
    makes it 0600, which would take a shared leaderboard's read access away from others)."""
    _remove_stale_temps(csv_path)
    existing = csv_path.read_bytes() if csv_path.exists() else b""
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"
    payload = existing + _serialize(new_rows, header=not existing.strip()).encode()
    old = csv_path.stat() if csv_path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=csv_path.parent, prefix=_temp_prefix(csv_path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fchmod(f.fileno(), stat.S_IMODE(old.st_mode) if old else _new_file_mode())
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root may give a file away
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            os.fsync(f.fileno())
        _replace(tmp, csv_path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(csv_path.parent)


def append_rows(csv_path: Path | str, rows: list[dict]) -> None:
    """Append rows atomically (no duplicate checks: use `publish`)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(csv_path.parent):
        read_rows(csv_path)  # refuse to append to a file that is not a leaderboard
        _write_atomic(csv_path, rows)


@dataclass
class PublishReport:
    csv_path: Path
    published: list[tuple[Path, dict]] = field(default_factory=list)
    refused: list[tuple[Path, str]] = field(default_factory=list)


def publish(run_dirs, csv_path: Path | str | None = None, *, verify: bool = True,
            dry_run: bool = False) -> PublishReport:
    """Append one row per acceptable run directory, in one atomic write; refusals are reported,
    not raised, so one bad run does not block the others. ``dry_run``: check, write nothing."""
    csv_path = Path(csv_path) if csv_path is not None else default_csv_path()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    report = PublishReport(csv_path=csv_path)
    verified_cache: dict = {}
    with _locked(csv_path.parent):
        _remove_stale_temps(csv_path)  # a dry run or an all-refused publish cleans up too
        seen = {row["run_id"]: row for row in read_rows(csv_path)}
        for run_dir in map(Path, run_dirs):
            try:
                result = load_result(run_dir)
                rid = run_id(result)
                if rid in seen:
                    raise Refusal(f"already published as run_id {rid} ({result.get('algorithm')} "
                                  f"{result.get('env')}/{result.get('split')} seed {result.get('seed')})")
                row = row_from_result(result, run_dir, verify=verify, verified_cache=verified_cache)
            except Refusal as exc:
                report.refused.append((run_dir, exc.format_message()))
                continue
            seen[rid] = row
            report.published.append((run_dir, row))
        if not dry_run and (report.published or not csv_path.exists()):
            _write_atomic(csv_path, [row for _, row in report.published])
    return report
