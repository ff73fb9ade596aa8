"""A run directory is cd-dspy's own: files a user put there are never overwritten or deleted (simulated LMs).

Each test puts a user's notes (thesis.txt, data.csv, and files named like artifacts) where cd-dspy writes, and
checks that they survive byte for byte, or that the run is refused with an error naming the folder and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import dspy
import pytest
from migrate_world import COT, Migration

from cd_dspy.cli.main import main
from cd_dspy.core.run_dir import MANIFEST, RunDir, RunDirError, write_file
from cd_dspy.phases.rulebook import PINNED, Rulebook, RulebookRule
from cd_dspy.testing.simulated import HELPFUL_RULES

SIM = ["--task", "simulated", "--target", "simulated-target", "--teacher", "simulated-teacher"]
USER_FILES = {"thesis.txt": b"Chapter 1\n\xe2\x80\x94 my own words\n", "data.csv": b"a,b\n1,2\n",
              "rules.json": b'["my rule, not cd-dspy\'s"]\n'}
FIX = "empty or new folder"


def put(folder: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def intact(folder: Path, files: dict[str, bytes]) -> bool:
    return all((folder / name).read_bytes() == data for name, data in files.items())


def compile_sim(sim, run_dir: Path, **settings):
    cd = sim.optimizer(run_dir=run_dir, num_trials=4, **settings)
    cd.compile(dspy.ChainOfThought("question -> answer: float"), trainset=sim.trainset, valset=sim.valset)
    return cd


def owned(folder: Path) -> set[str]:
    return set(json.loads((folder / MANIFEST).read_text())["files"])


def on_disk(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != MANIFEST}


def refused(call, folder: Path, *words: str) -> str:
    with pytest.raises(RunDirError) as info:
        call()
    for word in (str(folder), *words):
        assert word in str(info.value)
    return str(info.value)


# -- the Python API --------------------------------------------------------------------------------------

@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_of_user_files_is_refused_and_left_as_it_was(sim, tmp_path, resume):
    """resume=False used to delete every file in the folder; a first run (resume=True) deleted rules.json."""
    folder = tmp_path / "notes"
    files = put(folder, USER_FILES)
    refused(lambda: compile_sim(sim, folder, resume=resume), folder, "not a cd-dspy run directory", FIX)
    assert intact(folder, files) and sim.target_engine.calls == 0 and sim.teacher_engine.calls == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # not even a manifest was added


def test_a_users_own_fingerprint_json_does_not_make_their_folder_ours(sim, tmp_path):
    """Only a fingerprint a compile wrote ({phase: key}) adopts a folder; a user's file of that name does not."""
    folder = tmp_path / "experiment"
    files = put(folder, {**USER_FILES, "fingerprint.json": b'{"camera": "nikon", "shots": 12}\n'})
    refused(lambda: compile_sim(sim, folder, resume=False), folder, "not a cd-dspy run directory", FIX)
    assert intact(folder, files) and sim.target_engine.calls == 0


@pytest.mark.parametrize("name", ["rules.json", "result.json", "program.json"])
def test_a_user_file_named_like_an_artifact_in_a_new_dir_is_refused(sim, tmp_path, name):
    folder = tmp_path / "run"
    files = put(folder, {name: b"mine\n"})
    refused(lambda: compile_sim(sim, folder), folder, name, FIX)
    assert intact(folder, files)


def test_resume_false_removes_only_what_cd_dspy_wrote(sim, tmp_path):
    run = tmp_path / "run"
    compile_sim(sim, run)
    notes = put(run, {k: v for k, v in USER_FILES.items() if k != "rules.json"})  # rules.json is cd-dspy's here
    (run / "own").mkdir()
    notes_in_folder = put(run / "own", {"rules.json": USER_FILES["rules.json"]})
    calls = sim.teacher_engine.calls
    again = compile_sim(sim, run, resume=False)
    assert sim.teacher_engine.calls > calls and again.result.rules  # started over ...
    assert intact(run, notes) and intact(run / "own", notes_in_folder)  # ... and the user's files are untouched
    assert on_disk(run) - owned(run) == {*notes, "own", "own/rules.json"}  # every other file is in the manifest
    assert {"study.db", "program.json", "result.json", "rules.json", "evaluations.jsonl"} <= owned(run)


def test_a_rerun_whose_inputs_changed_keeps_user_files(sim, tmp_path):
    """A compile stopped before induce wrote no rules.json; the user's rules.json there used to be deleted on a
    rerun whose inputs changed, now it is refused; other notes survive a changed rerun that goes ahead."""
    run = tmp_path / "run"
    compile_sim(sim, run, max_teacher_calls=1)
    assert not (run / "rules.json").exists()
    files = put(run, USER_FILES)
    refused(lambda: compile_sim(sim, run, max_mistakes=3), run, "rules.json", "did not write")
    assert intact(run, files)
    (run / "rules.json").unlink()
    notes = {k: v for k, v in files.items() if k != "rules.json"}
    compile_sim(sim, run, max_mistakes=3)  # the inputs of induce changed: its files are redone
    assert intact(run, notes) and (run / "rules.json").exists() and "rules.json" in owned(run)


def test_an_old_run_dir_without_manifest_is_adopted(sim, tmp_path):
    """A run dir of a cd-dspy from before manifests (it has fingerprint.json) is adopted with our names only."""
    run = tmp_path / "run"
    compile_sim(sim, run)
    (run / MANIFEST).unlink(missing_ok=True)
    notes = put(run, {"thesis.txt": USER_FILES["thesis.txt"]})
    compile_sim(sim, run, resume=False)
    assert intact(run, notes) and "thesis.txt" not in owned(run) and "result.json" in owned(run)


def test_reading_an_old_run_dir_needs_no_manifest(capsys):
    committed = Path(__file__).resolve().parent.parent / "examples" / "results" / "simulated" / "cd_run"
    assert not (committed / MANIFEST).exists()
    assert main(["report", str(committed)]) == 0 and "rules" in capsys.readouterr().out.lower()
    assert not (committed / MANIFEST).exists()


def test_a_file_cd_dspy_did_not_write_is_never_overwritten_through_run_dir(tmp_path):
    run = RunDir(tmp_path / "run")
    run.write_json("result.json", {"n": 1})
    put(run.path, {"mine.json": b"{}"})
    refused(lambda: run.write_json("mine.json", {}), run.path / "mine.json", "did not write")
    refused(lambda: run.append_jsonl("mine.json", {}), run.path / "mine.json")
    assert (run.path / "mine.json").read_bytes() == b"{}"
    run.write_json("result.json", {"n": 2})  # ours: replaced
    assert json.loads((run.path / "result.json").read_text()) == {"n": 2}
    refused(lambda: RunDir(tmp_path / "run").refresh({"a": "1"}, {"a": ["mine.json"]}, resume=True),
            run.path / "mine.json")


def test_hidden_temp_files_of_our_atomic_writes_count_as_ours(tmp_path):
    """A kill mid-write leaves `.NAME.RANDOM.cd-dspy.tmp`: a folder holding only that is still new; a fresh start
    removes it with the other files cd-dspy wrote, and never a hidden file of the user's."""
    folder = tmp_path / "run"
    put(folder, {".result.json.x1y2.cd-dspy.tmp": b"{half", ".mine.tmp": b"user"})
    with pytest.raises(RunDirError):  # .mine.tmp is the user's: the folder is not empty
        RunDir(folder).claim()
    (folder / ".mine.tmp").unlink()
    run = RunDir(folder)
    run.write_json("result.json", {})
    put(folder, {".mine.tmp": b"user"})
    run.refresh({"a": "1"}, {"a": []}, resume=False)
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, ".mine.tmp", "fingerprint.json"]


# -- the command line ------------------------------------------------------------------------------------

def cli_compile(run_dir: Path, *extra: str) -> int:
    return main(["compile", *SIM, "--train", "12", "--val", "40", "--test", "4", "--trials", "4",
                 "--run-dir", str(run_dir), "--quiet", *extra])


def test_cli_fresh_refuses_a_folder_of_user_files_and_spares_notes_in_its_own(tmp_path, capsys):
    folder = tmp_path / "notes"
    files = put(folder, USER_FILES)
    assert cli_compile(folder, "--fresh") == 2
    err = capsys.readouterr().err
    assert str(folder) in err and FIX in err and intact(folder, files)
    run = tmp_path / "run"
    assert cli_compile(run) == 0
    assert {"report.md", "test_scores.json", "program.json"} <= owned(run) and on_disk(run) <= owned(run)
    notes = put(run, {"thesis.txt": USER_FILES["thesis.txt"], "data.csv": USER_FILES["data.csv"]})
    assert cli_compile(run, "--fresh") == 0
    assert intact(run, notes) and (run / "result.json").exists()


def test_rulebook_export_refuses_a_user_file_unless_forced(sim, tmp_path, capsys):
    run = tmp_path / "run"
    compile_sim(sim, run)
    mine = put(tmp_path, {"book.yaml": b"# my own rulebook, edited by hand\n"})
    assert main(["rulebook", "export", str(run), "-o", str(tmp_path / "book.yaml")]) == 2
    assert "--force" in capsys.readouterr().err and intact(tmp_path, mine)
    assert main(["rulebook", "export", str(run), "-o", str(tmp_path / "book.yaml"), "--force"]) == 0
    assert (tmp_path / "book.yaml").read_text().startswith("# cd-dspy rulebook")
    for _ in range(2):  # the default, RUN_DIR/rulebook.yaml, is cd-dspy's: a second export replaces it
        assert main(["rulebook", "export", str(run)]) == 0
    assert "rulebook.yaml" in owned(run)
    assert write_file(tmp_path / "new.yaml", "x").read_text() == "x"  # a new file outside a run dir: written


def test_migrate_refuses_a_folder_of_user_files_and_keeps_notes_in_its_own(tmp_path):
    world = Migration(n_test=8)
    folder = tmp_path / "notes"
    files = put(folder, USER_FILES)
    refused(lambda: world.run(folder, num_trials=4), folder, FIX)
    assert intact(folder, files) and world.source_engine.calls == 0 and world.target_engine.calls == 0
    run = tmp_path / "mig"
    world.run(run, num_trials=4)
    assert on_disk(run) - {p for p in on_disk(run) if p.startswith("compile/")} <= owned(run)
    assert {"compile", "report.html", "plots/scores.png", "heldout.jsonl", "rulebook.yaml"} <= owned(run)
    notes = put(run, {"thesis.txt": USER_FILES["thesis.txt"]})
    put(run / "plots", {"mine.png": b"png"})
    world.run(run, num_trials=4)  # a rerun re-renders the report, plots included, and leaves the notes
    assert intact(run, notes) and (run / "plots" / "mine.png").read_bytes() == b"png"


def test_rulebook_check_refuses_a_folder_of_user_files(sim, tmp_path):
    from cd_dspy.migration.transfer import check_rulebook

    book = Rulebook([RulebookRule(HELPFUL_RULES["units"], "predict", PINNED)]).save(tmp_path / "book.yaml")
    folder = tmp_path / "notes"
    files = put(folder, USER_FILES)
    refused(lambda: check_rulebook(dspy.ChainOfThought(COT), book, sim.target, sim.metric,
                                   sim.valset[:4], run_dir=folder), folder, FIX)
    assert intact(folder, files) and sim.target_engine.calls == 0


def test_distill_out_refuses_a_folder_of_user_files(tmp_path, capsys):
    folder = tmp_path / "out"
    files = put(folder, {**USER_FILES, "train.jsonl": b'{"mine": 1}\n', "report.md": b"# my report\n"})
    assert main(["distill", "--task", "simulated", "--teacher", "simulated-solver", "--train", "4", "--val", "0",
                 "--test", "0", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and FIX in err and intact(folder, files)


def test_distill_out_names_every_output_in_its_manifest(tmp_path):
    from argparse import Namespace

    from cd_dspy.cli.distill import claim_out

    out = tmp_path / "out"
    claim_out(out, Namespace(mode="kd", select_on="loss"), [(0.5, 1.0), (0.9, 2.0)])
    assert {"train.jsonl", "train.meta.jsonl", "val.jsonl", "kd-0", "kd-1", "report.md"} <= owned(out)
    claim_out(out, Namespace(mode="sft", select_on="metric"), None)  # an earlier distill's folder: ours
    (out / "sft").mkdir()
    put(out / "sft", {"adapter.gguf": b"ours"})
    put(out, {"thesis.txt": b"mine"})
    claim_out(out, Namespace(mode="sft", select_on="metric"), None)
    put(out, {"kd-2": b"mine"})
    refused(lambda: claim_out(out, Namespace(mode="kd", select_on="metric"), [(0.5, 1), (0.5, 2), (0.9, 2)]),
            out / "kd-2", "did not write")


def test_worker_output_never_replaces_a_file(tmp_path):
    from cd_dspy.testing.local_workers import _new_file

    mine = put(tmp_path, {"worker0.out": b"my log"})
    path, handle = _new_file(tmp_path, "worker0", ".out")
    handle.close()
    assert path.name == "worker0-1.out" and intact(tmp_path, mine)
