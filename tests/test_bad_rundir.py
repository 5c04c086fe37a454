"""Every command against bad run directories and bad configs: one `error:` line, exit 2, no traceback.

In-process (`main(argv)`): each case fails before Ray or a model starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.__main__ import main

COMMANDS = {
    "run": ["run"],
    "status": ["status"],
    "report": ["report"],
    "export": ["export", "--format", "jsonl"],
    "remove": ["remove", "--identity", "someone"],
    "generate": ["generate", "--identity", "someone", "--prompt", "a photo of a man img"],
}
# run directories, by what is wrong with them; `run` makes a new run where there is none, so it gets only the first two
RUN_DIRS = {
    "a file": lambda root: _file(root / "file"),
    "below a file": lambda root: _file(root / "file") / "run",
    "no run.json": lambda root: _folder(root / "empty"),
    "corrupt run.json": lambda root: _file(_folder(root / "corrupt") / "run.json", b"garbage{").parent,
    "run.json of another shape": lambda root: _file(_folder(root / "shape") / "run.json", b'{"identities": 3}').parent,
    "no config.yaml": lambda root: _file(_folder(root / "noconfig") / "run.json", RUN_JSON).parent,
}
RUN_JSON = b'{"profile": "default", "stage_hashes": {}, "identities": [["a", "A"]]}'

CONFIGS = {
    "not YAML": "filter: [unclosed\n",
    "not a mapping": "- filter\n- verify\n",
    "an unknown key": "filter:\n  min_short_sid: 3\n",
    "aliases": "a: &a [1, 2]\nfilter: {min_short_side: *a}\n",
}


def _file(path: Path, content: bytes = b"not a run\n") -> Path:
    path.write_bytes(content)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def assert_one_error_line(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def _applies(command: str, case: str) -> bool:
    """`run` starts a new run in a folder without one; `status` reads no config.yaml."""
    if command == "run":
        return case in ("a file", "below a file")
    return (command, case) != ("status", "no config.yaml")


@pytest.mark.parametrize(("command", "case"), [(c, d) for c in COMMANDS for d in RUN_DIRS if _applies(c, d)])
def test_a_bad_run_directory_is_one_error_line(tmp_path, capsys, command: str, case: str) -> None:
    out = RUN_DIRS[case](tmp_path)
    assert_one_error_line([*COMMANDS[command], "--out", str(out)], capsys)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", CONFIGS)
def test_a_bad_config_file_is_one_error_line(tmp_path, capsys, command: str, case: str) -> None:
    profile = _file(tmp_path / "profile.yaml", CONFIGS[case].encode())
    assert_one_error_line([*COMMANDS[command], "--config", str(profile), "--out", str(tmp_path / "run")], capsys)


def test_a_folder_given_as_config_is_one_error_line(tmp_path, capsys) -> None:
    err = assert_one_error_line(["status", "--config", str(tmp_path), "--out", str(tmp_path)], capsys)
    assert err.startswith(f"error: cannot read config {tmp_path}")


def test_an_unknown_scheme_is_one_error_line(capsys) -> None:
    err = assert_one_error_line(["status", "--out", "nosuch://bucket/run"], capsys)
    assert err.startswith("error: cannot open nosuch://bucket/run as a run directory")


def test_a_file_as_out_is_named(tmp_path, capsys) -> None:
    out = _file(tmp_path / "file")
    err = assert_one_error_line(["run", "--out", str(out)], capsys)
    assert err.startswith(f"error: {out} is a file, not a run directory")


def test_torn_state_files_are_made_again_but_a_torn_takedown_stops(tmp_path, capsys) -> None:
    """The shard step's and hygiene's fingerprints can be made again: status reads past them. A takedown
    request cannot: skipping it would re-admit what it removed, so every command stops on it."""
    run = _file(_folder(tmp_path / "run") / "run.json", RUN_JSON).parent
    for state in ("shards/_done.json", "stages/hygiene/_run/done.json"):
        (run / state).parent.mkdir(parents=True)
        _file(run / state, b"garbage{")
    assert main(["status", "--out", str(run)]) == 0
    capsys.readouterr()
    _file(_folder(_folder(run / "governance") / "removals") / "20260101-x.json", b'{"kind": ')
    err = assert_one_error_line(["status", "--out", str(run)], capsys)
    assert "removals ledger entry" in err and "20260101-x.json" in err
