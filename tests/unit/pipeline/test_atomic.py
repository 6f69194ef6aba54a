"""Outputs appear whole or not at all."""

from __future__ import annotations

import pytest

from neox.pipeline.atomic import atomic_directory
from neox.pipeline.stage import StageResult, StageRun, run_stage


def test_success_publishes_the_directory(tmp_path):
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
        assert not (tmp_path / "out").exists()  # nothing visible until complete
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_swaps_only_a_complete_replacement(tmp_path):
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic_directory(tmp_path / "out"):
            pass
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError
    assert (tmp_path / "out" / "v").read_text() == "1"
    with atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "v").write_text("2")
    assert (tmp_path / "out" / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_stage_output_published_meanwhile_by_a_concurrent_run_is_kept(tmp_path):
    """Two runs computing the same content-addressed stage: the later one keeps the first's output (a reader
    may hold it open) and drops its own copy."""
    from neox.pipeline.stage import publish_stage, verify_output

    with publish_stage(tmp_path, "demo", "1", {"x": 1}, {}) as late:
        (late.tmp / "out.txt").write_text("late")
        with publish_stage(tmp_path, "demo", "1", {"x": 1}, {}) as early:
            (early.tmp / "out.txt").write_text("early")
    (output,) = [p for p in (tmp_path / "demo").iterdir()]
    assert (output / "out.txt").read_text() == "early" and verify_output(output)


def test_a_rerun_removes_what_a_killed_attempt_of_its_own_key_left_and_nothing_else(tmp_path, capsys):
    def body(run: StageRun) -> None:
        (run.tmp / "out.txt").write_text("done")

    def attempt() -> StageResult:
        return run_stage(tmp_path, "demo", "1", {"x": 1}, {}, body)

    output = attempt().path
    killed = [output.parent / f".{output.name}.tmp-0badc0de", output.parent / f".{output.name}.old-0badc0de"]
    live = output.parent / ".0123456789abcdef.tmp-12345678"  # another key's attempt, maybe running now
    for folder in [*killed, live]:
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"\0" * 10)
    assert attempt() == StageResult(output, reused=True)
    assert not any(f.exists() for f in killed) and (live / "half.bin").exists()
    assert "left by an attempt that was stopped" in capsys.readouterr().err


def test_a_file_added_to_a_published_output_voids_it_for_readers_and_a_rerun_redoes_it(tmp_path, capsys):
    """A shard copied into a stage's output by hand would be read by the next stage as if the stage wrote it."""
    from neox.pipeline.stage import ManifestError, input_fingerprint

    def body(run: StageRun) -> None:
        (run.tmp / "00.jsonl").write_text('{"text": "kept"}\n')

    output = run_stage(tmp_path, "demo", "1", {"x": 1}, {}, body).path
    (output / ".DS_Store").write_bytes(b"\0")  # a file browser's, read by no stage: the output stays good
    (output / ".manifest.json.swp").write_bytes(b"\0")  # an editor's, open on the manifest
    assert run_stage(tmp_path, "demo", "1", {"x": 1}, {}, body).reused
    (output / "02.jsonl").write_text('{"text": "stray"}\n')
    with pytest.raises(ManifestError, match=r"holds 1 file\(s\) its manifest does not list \(02.jsonl\)"):
        input_fingerprint(output)  # the next stage refuses it as its input
    assert not run_stage(tmp_path, "demo", "1", {"x": 1}, {}, body).reused  # the stage's rerun redoes it
    assert sorted(p.name for p in output.iterdir()) == ["00.jsonl", "manifest.json"]
    assert "its manifest does not list (02.jsonl)" in capsys.readouterr().err
