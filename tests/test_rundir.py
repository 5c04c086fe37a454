"""Atomic writes: a reader never sees half a file, and a failed write leaves nothing behind."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.core.rundir import RunDir


def test_a_failed_write_leaves_no_part_and_no_temporary(tmp_path) -> None:
    run = RunDir(str(tmp_path))
    with pytest.raises(RuntimeError), run.open_atomic("stages/x/part-a.parquet") as stream:
        stream.write(b"half a parquet file")
        raise RuntimeError("disk full")
    assert list((tmp_path / "stages" / "x").iterdir()) == []


def test_temporaries_are_invisible_and_cleaned(tmp_path) -> None:
    run = RunDir(str(tmp_path))
    run.write_table("stages/x/part-a.parquet", pa.table({"v": [1]}))
    (tmp_path / "stages" / "x" / "part-b.parquet.tmp-0123").write_bytes(b"killed mid-write")
    assert run.list_files("stages/x", ".parquet") == ["part-a.parquet"]
    run.remove_temporaries("stages/x")
    assert sorted(p.name for p in (tmp_path / "stages" / "x").iterdir()) == ["part-a.parquet"]
    assert run.read_table("stages/x/part-a.parquet")["v"].to_pylist() == [1]
