"""Assertions shared by the CLI tests (imported by name: pytest puts tests/ on sys.path)."""


def assert_one_line_error(result, *fragments):
    """A click result that failed the way bad input must: exit 2, one `error: ...` line naming `fragments`."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
