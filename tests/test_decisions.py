"""The curator's decisions log (pipeline/core/decisions.py): append-only, torn lines tolerated, last row per key
wins, undo; and verify's application of decisions to rows (stages/curation.py) on stored evidence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.core.decisions import (
    ACCEPT, CLASS_WORD, LOG, MERGE, REJECT, SPLIT, TARGET_FACE, UNDO, Decision, append, current, digest, read_log,
)
from pipeline.core.errors import UserError
from pipeline.core.rundir import RunDir
from pipeline.__main__ import main

A, B = "a" * 64, "b" * 64


def kinds(run: RunDir) -> list[tuple[str, str | None, object]]:
    return [(logged.decision.kind, logged.decision.image, logged.decision.value) for logged in current(run)]


def test_the_last_row_per_photo_wins_and_undo_replays_the_log_without_the_row(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    assert append(run, Decision("jolie", REJECT, A)) == 1
    assert append(run, Decision("jolie", ACCEPT, A, note="she is, in profile")) == 2
    assert append(run, Decision("jolie", TARGET_FACE, B, 1)) == 3
    assert append(run, Decision("jolie", CLASS_WORD, value="woman")) == 4
    assert kinds(run) == [(ACCEPT, A, None), (TARGET_FACE, B, 1), (CLASS_WORD, None, "woman")]
    assert append(run, Decision("jolie", UNDO, value=2)) == 5  # the reject of row 1 holds again
    assert kinds(run) == [(REJECT, A, None), (TARGET_FACE, B, 1), (CLASS_WORD, None, "woman")]
    assert [logged.row for logged in read_log(run).rows] == [1, 2, 3, 4, 5]
    assert read_log(run).rows[1].decision.by == (os.environ.get("USER") or read_log(run).rows[1].decision.by)


def test_a_torn_last_line_is_skipped_and_reported_and_the_next_row_starts_a_line_of_its_own(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path))
    append(run, Decision("jolie", REJECT, A))
    with open(tmp_path / LOG, "ab") as stream:  # a writer killed mid-line
        stream.write(b'{"identity": "jolie", "kind": "acc')
    assert read_log(run).torn == [2]
    assert append(run, Decision("jolie", SPLIT, B, "Brad Pitt")) == 3
    log = read_log(run)
    assert log.torn == [2] and [logged.row for logged in log.rows] == [1, 3]
    assert kinds(run) == [(REJECT, A, None), (SPLIT, B, "Brad Pitt")]


@pytest.mark.parametrize("decision, problem", [
    (Decision("jolie", REJECT), "needs --image"),
    (Decision("jolie", REJECT, "not-a-sha"), "is not a sha256"),
    (Decision("jolie", MERGE, A, "pitt"), "takes no --image"),
    (Decision("jolie", TARGET_FACE, A, -1), "face index"),
    (Decision("jolie", CLASS_WORD, value=" "), "needs a value"),
    (Decision("jolie", UNDO, value=7), "no decision row 7"),
    (Decision("jolie", "delete", A), "unknown decision"),
])
def test_a_decision_that_cannot_apply_is_refused_before_it_is_written(tmp_path: Path, decision: Decision,
                                                                      problem: str) -> None:
    run = RunDir(str(tmp_path))
    with pytest.raises(UserError, match=problem):
        append(run, decision)
    assert not run.exists(LOG)


def test_the_digest_covers_what_decisions_decide_not_who_or_when() -> None:
    one = [Decision("jolie", REJECT, A, by="ann", time="t1", note="x")]
    same = [Decision("jolie", REJECT, A, by="bob", time="t2")]
    assert digest(one) == digest(same) != digest([Decision("jolie", ACCEPT, A)])
    assert digest([]) == ""


def test_decide_records_lists_and_undoes_from_the_command_line(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDir(str(tmp_path))
    identities = [["angelina_jolie", "Angelina Jolie"]]
    run.write_json("run.json", {"profile": "cpu", "stage_hashes": {}, "identities": identities})
    run.write_bytes("config.yaml", b"{}\n")

    def decide(*args: str) -> tuple[int, str, str]:
        code = main(["decide", "--config", "cpu", "--out", str(tmp_path), *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = decide("--identity", "Angelina Jolie", "--image", A.upper(), "--reject", "--note", "a look-alike",
                          "--by", "ann")
    assert code == 0 and "row 1 recorded" in out and "decide --apply" in out
    code, out, _ = decide("--list")
    assert code == 0 and f"1  angelina_jolie  reject  {A}  by ann" in out
    assert decide("--undo", "1")[0] == 0
    assert decide("--list")[1].strip() == "no decisions"
    assert "undo 1" in decide("--list", "--all")[1]
    code, _, err = decide("--identity", "Brad Pitt", "--image", A, "--accept")
    assert code == 2 and err.startswith("error: no identity 'Brad Pitt'")
