"""Helpers shared by the CLI and run tests (imported by name: pytest puts tests/ on sys.path)."""

import time

import torch


def assert_one_line_error(result, *fragments):
    """A click result that failed the way bad input must: exit 2, one `error: ...` line naming `fragments`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def wait_for_checkpoint(proc, path, timeout=240.0, log=None):
    """Poll until a run subprocess has written `path` (or died, or `timeout` passed)."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), log.read_text() if log is not None else "no checkpoint appeared"


def checkpoint_step(path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])
