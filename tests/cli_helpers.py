"""Running `ncodec` in-process from tests, and the one-line-error rule (exit 2, one line, no traceback)."""
from __future__ import annotations

from cli.main import main


def run(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `ncodec ARGS` run in this process."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, fragment: str = "") -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ncodec: "), err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
