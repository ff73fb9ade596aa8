"""examples/benchmark.py on the simulated LMs: outputs, CD vs baseline, resume, crashes; the bootstrap CI helper."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import EXAMPLES, load_example

sys.path.insert(0, str(EXAMPLES))

from bench_lib import held_out_record, measured_budget, peer_configs, target_budget  # noqa: E402
from bench_report import gap_closed, label_groups, program_unchanged, prompt_tokens  # noqa: E402

bench = load_example("benchmark")
TINY = ["--task", "simulated", "--train", "8", "--val", "32", "--test", "12", "--trials", "4", "--seed", "0"]


def _run(tmp_path, methods: str, *extra: str) -> dict:
    return bench.main([*TINY, "--methods", methods, "--out", str(tmp_path / "sim"), *extra])


# -- the whole benchmark ----------------------------------------------------------------------------
def test_simulated_benchmark_writes_outputs_and_cd_beats_baseline(tmp_path):
    data = _run(tmp_path, "baseline,cd,miprov2_instr,inferrules_instr,gepa,teacher")
    for ext in (".json", ".md", ".png"):
        assert (tmp_path / f"sim{ext}").stat().st_size > 0
    saved = json.loads((tmp_path / "sim.json").read_text())
    assert saved["splits"] == {"train": 8, "val": 32, "test": 12}
    assert "--task simulated" in saved["command"]
    methods = saved["methods"]
    assert all(rec["status"] == "ok" for rec in methods.values()), {m: r.get("error") for m, r in methods.items()}
    assert methods["cd"]["test"]["score"] > methods["baseline"]["test"]["score"]
    assert methods["teacher"]["test"]["score"] == 100.0  # the simulated teacher is the ceiling
    assert methods["cd"]["selected_rules"]
    # a fresh program's saved state equals another fresh one's; CD's selected rules change it
    assert methods["baseline"]["program_unchanged"] is True and methods["cd"]["program_unchanged"] is False
    # calls are split by role and phase
    assert methods["baseline"]["usage"]["test"]["target"]["calls"] == 12
    assert methods["teacher"]["usage"]["test"]["teacher"]["calls"] == 12
    assert methods["teacher"]["usage"]["test"]["target"]["calls"] == 0
    assert methods["cd"]["usage"]["compile"]["teacher"]["calls"] > 0
    for peer in ("miprov2_instr", "inferrules_instr", "gepa"):  # peers reach the teacher (InferRules via an LM copy)
        assert methods[peer]["usage"]["compile"]["teacher"]["calls"] > 0, peer
        assert methods[peer]["usage"]["compile"]["target"]["calls"] > 0, peer
    assert data["gap_closed"]["cd"] == pytest.approx(gap_closed(methods)) and data["gap_closed"]["cd"] > 0
    # peers run after CD get CD's measured compile-time target calls as their budget
    assert saved["settings"]["peer_budget"] == measured_budget(methods)
    assert methods["gepa"]["config"]["init"]["max_metric_calls"] == measured_budget(methods)
    vs = methods["cd"]["test"]["vs_baseline"]  # paired with the baseline on the same test problems
    assert vs["difference"] == pytest.approx(methods["cd"]["test"]["score"] - methods["baseline"]["test"]["score"])
    assert "vs_baseline" not in methods["baseline"]["test"]
    md = (tmp_path / "sim.md").read_text()
    assert "| cd |" in md and "Gap closed" in md and "PARTIAL" not in md
    assert (tmp_path / "sim" / "cd_run").is_dir()


def test_resume_skips_finished_methods(tmp_path, monkeypatch):
    _run(tmp_path, "baseline,teacher")
    first = json.loads((tmp_path / "sim.json").read_text())
    ran = []
    original = bench.Benchmark.run
    monkeypatch.setattr(bench.Benchmark, "run", lambda self, m: ran.append(m) or original(self, m))
    data = _run(tmp_path, "baseline,cd,teacher")
    assert ran == ["cd"]
    assert data["methods"]["baseline"] == first["methods"]["baseline"]
    assert list(data["methods"]) == ["baseline", "teacher", "cd"]


def test_crashing_method_is_recorded_and_retried_on_request(tmp_path, monkeypatch):
    original = bench.Benchmark.compile

    def crash(self, method, meter):
        if method == "miprov2_instr":
            raise RuntimeError("boom")
        return original(self, method, meter)

    monkeypatch.setattr(bench.Benchmark, "compile", crash)
    data = _run(tmp_path, "miprov2_instr,baseline")
    assert data["methods"]["miprov2_instr"]["status"] == "error" and "boom" in data["methods"]["miprov2_instr"]["error"]
    assert data["methods"]["baseline"]["status"] == "ok"
    assert "error: RuntimeError: boom" in (tmp_path / "sim.md").read_text()
    assert "PARTIAL: miprov2_instr not finished" in (tmp_path / "sim.md").read_text()
    monkeypatch.setattr(bench.Benchmark, "compile", original)
    assert _run(tmp_path, "miprov2_instr")["methods"]["miprov2_instr"]["status"] == "error"  # skipped: old record
    assert _run(tmp_path, "miprov2_instr", "--retry-errors")["methods"]["miprov2_instr"]["status"] == "ok"


def test_other_settings_refuse_to_resume(tmp_path):
    _run(tmp_path, "baseline")
    with pytest.raises(SystemExit):
        bench.main([*TINY[:-2], "--seed", "1", "--methods", "baseline", "--out", str(tmp_path / "sim")])


def test_methods_see_only_inputs_and_what_the_metric_reads():
    from bench_lib import load_task

    task = load_task("simulated", 0, {"train": 4, "val": 4, "test": 4})
    assert all(set(e.keys()) == {"question", "answer"} for split in task.splits.values() for e in split)
    assert all(set(e.inputs().keys()) == {"question"} for e in task.splits["train"])


def test_unknown_method_is_rejected():
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "baseline,nope"])


# -- helpers ----------------------------------------------------------------------------------------
def test_test_record_interval_and_paired_sign_test():
    before = [0.0] * 20 + [1.0] * 20
    after = [1.0] * 8 + [0.0] * 12 + [1.0] * 19 + [0.0]  # 8 fixed, 1 broken on the same 40 problems
    rec = held_out_record(after, before)
    assert rec["score"] == pytest.approx(100 * 27 / 40) and rec["n"] == 40
    assert rec["ci"][0] < rec["score"] < rec["ci"][1]
    vs = rec["vs_baseline"]
    assert (vs["fixed"], vs["broken"]) == (8, 1)
    assert vs["difference"] == pytest.approx(100 * 7 / 40)
    assert vs["p_two_sided"] == pytest.approx(0.0390625)  # exact binomial: 2 * P(X <= 1 | n=9, p=1/2)
    assert "vs_baseline" not in held_out_record(after, None)
    assert "vs_baseline" not in held_out_record(after, before[:-1])  # other problems: no paired test


def test_identical_scores_are_not_distinguishable():
    same = [1.0, 0.0] * 20
    vs = held_out_record(same, same)["vs_baseline"]
    assert vs["fixed"] == vs["broken"] == 0 and vs["p_two_sided"] == pytest.approx(1.0)


def test_a_method_that_returned_the_program_unchanged_reads_as_the_baseline():
    """Flagged by the run, or (older records) same instructions and every test call a cache hit."""
    baseline = {"instructions": {"generate": "Solve it."}}
    test_calls = lambda calls, cached: {"usage": {"test": {"target": {"calls": calls, "cached_calls": cached}}}}  # noqa: E731
    assert program_unchanged({"program_unchanged": True, **baseline}, baseline)
    # a flag from a run whose fresh programs were changed in place by a peer: the instructions tell
    assert not program_unchanged({"program_unchanged": True, "instructions": {"generate": "Rules: ..."}}, baseline)
    assert not program_unchanged({"program_unchanged": False, **baseline, **test_calls(0, 12)}, baseline)
    assert program_unchanged({**baseline, **test_calls(0, 12)}, baseline)
    assert not program_unchanged({**baseline, **test_calls(12, 0)}, baseline)  # new prompts: demos changed
    assert not program_unchanged({"instructions": {"generate": "Other."}, **test_calls(0, 12)}, baseline)


def test_a_baseline_measured_before_token_counts_takes_them_from_a_row_that_sent_its_prompts():
    """Prompt tokens per test call for every row: an old baseline record borrows the count of an unchanged program."""
    baseline = {"instructions": {"generate": "Solve it."}}
    methods = {"baseline": baseline,
               "teacher": {**baseline, "program_unchanged": True, "prompt_tokens_per_call": 150.0},  # its tokenizer
               "demos": {"instructions": baseline["instructions"], "program_unchanged": False,
                         "prompt_tokens_per_call": 900.0},
               "unchanged": {**baseline, "program_unchanged": True, "prompt_tokens_per_call": 181.0}}
    assert prompt_tokens("baseline", baseline, methods) == (181.0, " (counted on an unchanged row)")
    assert prompt_tokens("teacher", methods["teacher"], methods) == (150.0, "")  # counted on its own calls
    assert prompt_tokens("demos", methods["demos"], methods) == (900.0, "")
    assert prompt_tokens("gepa", {**baseline, "program_unchanged": True}, methods) == (181.0, " (baseline's prompts)")
    del methods["unchanged"]  # only a changed program counted: the baseline's count stays unknown
    assert prompt_tokens("baseline", baseline, methods) == (None, "")


def test_a_peer_that_assigns_signature_instructions_changes_no_other_program():
    """DSPy's InferRules sets `predictor.signature.instructions`; with a Signature class shared by every
    program, the next method would start from its instructions."""
    from bench_lib import load_task

    task = load_task("humaneval", 0, {"train": 1, "val": 0, "test": 0})
    first, second = task.make_program(), task.make_program()
    before = second.named_predictors()[0][1].signature.instructions
    first.named_predictors()[0][1].signature.instructions = "Rules: changed in place."
    assert second.named_predictors()[0][1].signature.instructions == before
    assert task.make_program().dump_state() == second.dump_state()


def test_gap_closed():
    rec = lambda s: {"test": {"score": s}}  # noqa: E731
    assert gap_closed({"baseline": rec(20), "cd": rec(50), "teacher": rec(80)}) == pytest.approx(0.5)
    assert gap_closed({"baseline": rec(20), "cd": rec(50), "teacher": rec(20)}) is None
    assert gap_closed({"baseline": rec(20), "teacher": rec(80)}) is None


def test_peer_budgets_match_cd():
    budget = target_budget(12, 12, 6)
    assert budget == 12 + (6 + 3) * 12
    peers = peer_configs(12, 12, budget, threads=1, seed=0)
    assert peers["gepa"]["init"]["max_metric_calls"] == budget
    assert peers["miprov2_instr"]["compile"]["num_trials"] + 1 == peers["inferrules_instr"]["init"]["num_candidates"]
    assert peers["inferrules_instr"]["init"]["num_candidates"] == 10
    instr = peers["miprov2_instr"]["init"]
    assert instr["max_bootstrapped_demos"] == instr["max_labeled_demos"] == 0
    assert peers["simba_instr"]["init"]["max_steps"] >= 1 and peers["simba_instr"]["init"]["max_demos"] == 0
    # the demonstration rows keep DSPy's demo defaults; only their size knob follows the budget
    assert "max_bootstrapped_demos" not in peers["miprov2_demos"]["init"]
    assert "max_demos" not in peers["simba_demos"]["init"]
    assert peers["miprov2_demos"]["compile"] == peers["miprov2_instr"]["compile"]
    assert peers["bootstrap_rs"]["init"]["num_candidate_programs"] == 10 - 3  # + zero-shot, labeled-only, unshuffled
    assert peers["bootstrap_fewshot"]["init"] == {"max_bootstrapped_demos": 4, "max_labeled_demos": 0}
    assert all(cfg["changed"] for cfg in peers.values())  # every departure from DSPy's defaults is stated


def test_peers_get_cds_measured_budget():
    assert measured_budget({}) is None
    cd = {"status": "ok", "usage": {"compile": {"target": {"calls": 150, "cached_calls": 30}}}}
    assert measured_budget({"cd": cd}) == 180
    assert measured_budget({"cd": {**cd, "status": "error"}}) is None
    assert measured_budget({"cd_exemplars": cd, "cd_rules": {**cd, "usage": {}}}) == 180  # the default carrier's row


def test_methods_at_the_same_place_on_the_plot_share_one_label():
    points = [("cd", 85, 47.6), ("miprov2", 86, 47.6), ("inferrules", 80, 45.2), ("simba", 200, 47.6)]
    assert label_groups(points) == [(["cd", "miprov2"], 85, 47.6), (["inferrules"], 80, 45.2),
                                     (["simba"], 200, 47.6)]


def test_demonstration_peers_run_with_the_teacher_and_report_prompt_tokens(tmp_path):
    """BootstrapFewShot and its random search bootstrap with the teacher (DSPy's teacher_settings) and put demos
    into the program; every test row counts prompt tokens per request, and demos make prompts longer."""
    data = _run(tmp_path, "baseline,bootstrap_fewshot,bootstrap_rs,teacher", "--peer-budget", "200")
    methods = data["methods"]
    assert all(rec["status"] == "ok" for rec in methods.values()), {m: r.get("error") for m, r in methods.items()}
    assert methods["bootstrap_fewshot"]["program_unchanged"] is False  # (random search may keep zero-shot)
    for name in ("bootstrap_fewshot", "bootstrap_rs"):
        assert methods[name]["usage"]["compile"]["teacher"]["calls"] > 0, name  # the teacher wrote the demos
    assert methods["bootstrap_fewshot"]["usage"]["compile"]["target"]["calls"] == 0  # no validation: no target call
    assert methods["bootstrap_rs"]["usage"]["compile"]["target"]["calls"] > 0
    assert methods["bootstrap_rs"]["config"]["init"]["num_candidate_programs"] == 3  # 200 calls / 32 val - 3
    base = methods["baseline"]["prompt_tokens_per_call"]
    assert base is not None and base > 0
    assert methods["bootstrap_fewshot"]["prompt_tokens_per_call"] > base
    md = (tmp_path / "sim.md").read_text()
    assert "| bootstrap_fewshot | demos |" in md and "Holm" in md and "prompt tokens / test call" in md
    assert "max_labeled_demos 0 (default 16)" in md


def test_holm_adjusts_every_paired_p_over_the_table():
    from bench_report import compare_with_baseline

    base = [0.0] * 40
    methods = {"baseline": {"status": "ok", "test": {"scores": base}},
               "a": {"status": "ok", "test": {"scores": [1.0] * 6 + [0.0] * 34}},
               "b": {"status": "ok", "test": {"scores": [1.0] * 20 + [0.0] * 20}}}
    compare_with_baseline(methods)
    a, b = (methods[m]["test"]["vs_baseline"] for m in ("a", "b"))
    assert b["p_holm"] == pytest.approx(min(1.0, 2 * b["p_two_sided"]))  # the smaller p times the 2 comparisons
    assert a["p_holm"] == pytest.approx(max(b["p_holm"], a["p_two_sided"]))


def test_old_records_are_read_under_their_instruction_only_names(tmp_path):
    _run(tmp_path, "baseline")
    path = tmp_path / "sim.json"
    saved = json.loads(path.read_text())
    saved["methods"]["miprov2"] = {**saved["methods"]["baseline"], "method": "miprov2"}
    saved["planned"].append("miprov2")
    path.write_text(json.dumps(saved))
    data = _run(tmp_path, "miprov2")  # the old name on the command line too
    assert "miprov2_instr" in data["methods"] and "miprov2" not in data["methods"]


def test_the_weights_row_is_checked_against_the_baseline(tmp_path):
    from bench_lib import sft_row

    args = bench.parse_args([*TINY, "--sft-results", str(tmp_path / "d.json")])
    rows = {"none": {"scores": [0.0, 1.0]}, "sft": {"scores": [1.0, 1.0], "train": {"seconds": 50.0}}}
    (tmp_path / "d.json").write_text(json.dumps({"task": "simulated", "target": args.target, "teacher": args.teacher,
                                                  "splits": {"test": 2}, "data": {"examples": 8}, "rows": rows}))
    row = sft_row(args, [None, None], [0.0, 1.0])
    assert row["imported"]["scores"] == [1.0, 1.0] and row["usage"]["teacher"]["calls"] == 8
    with pytest.raises(ValueError, match="did not score exactly as this benchmark's baseline"):
        sft_row(args, [None, None], [1.0, 1.0])
    with pytest.raises(ValueError, match="not this benchmark's task"):
        sft_row(args, [None, None, None], [0.0, 1.0])
    # the whole row, in the table: measured elsewhere, paired with this baseline
    base = _run(tmp_path, "baseline")["methods"]["baseline"]["test"]["scores"]
    rows = {"none": {"scores": base}, "sft": {"scores": [1.0] * len(base), "train": {"seconds": 50.0}}}
    distill = {"task": "simulated", "target": args.target, "teacher": args.teacher, "splits": {"test": len(base)},
               "data": {"examples": 8}, "rows": rows}
    (tmp_path / "d.json").write_text(json.dumps(distill))
    data = _run(tmp_path, "sft_lora", "--sft-results", str(tmp_path / "d.json"))
    row = data["methods"]["sft_lora"]
    assert row["status"] == "ok" and row["test"]["score"] == 100.0 and row["seconds"]["total"] == 50.0
    assert row["usage"]["compile"]["teacher"]["calls"] == 8  # the teacher's data calls are its compile cost
    assert row["test"]["vs_baseline"]["fixed"] == len(base) - sum(base)
    assert "| sft_lora | weights |" in (tmp_path / "sim.md").read_text()


def test_bootstrap_fewshot_then_cd_keeps_the_demos_and_is_compared_with_bootstrap_fewshot_alone(tmp_path):
    data = _run(tmp_path, "baseline,bootstrap_fewshot,bfs_then_cd")
    methods = data["methods"]
    assert all(rec["status"] == "ok" for rec in methods.values()), {m: r.get("error") for m, r in methods.items()}
    recipe = methods["bfs_then_cd"]
    assert recipe["usage"]["compile"]["teacher"]["calls"] > methods["bootstrap_fewshot"]["usage"]["compile"][
        "teacher"]["calls"]  # BootstrapFewShot's teacher calls, then CD's
    vs = recipe["test"]["vs_reference"]
    assert vs["reference"] == "bootstrap_fewshot"
    assert vs["difference"] == pytest.approx(recipe["test"]["score"] - methods["bootstrap_fewshot"]["test"]["score"])
    assert recipe["prompt_tokens_per_call"] >= methods["bootstrap_fewshot"]["prompt_tokens_per_call"]  # demos kept
    md = (tmp_path / "sim.md").read_text()
    assert "bfs_then_cd against bootstrap_fewshot on the same problems" in md
    assert (tmp_path / "sim" / "bfs_then_cd_run" / "result.json").exists()


def test_prompt_tokens_of_an_instruction_only_row_are_recounted_without_running_it(tmp_path):
    """--count-prompts rebuilds the request from the recorded instructions: the same count the run measured."""
    measured = _run(tmp_path, "baseline,inferrules_instr")["methods"]
    path = tmp_path / "sim.json"
    saved = json.loads(path.read_text())
    for rec in saved["methods"].values():
        del rec["prompt_tokens_per_call"]
    path.write_text(json.dumps(saved))
    recounted = _run(tmp_path, "baseline,inferrules_instr", "--count-prompts")["methods"]
    for method in ("baseline", "inferrules_instr"):
        assert recounted[method]["prompt_tokens_per_call"] == pytest.approx(measured[method]["prompt_tokens_per_call"])
        assert recounted[method]["usage"] == measured[method]["usage"]  # nothing was run again
    assert measured["inferrules_instr"]["prompt_tokens_per_call"] != measured["baseline"]["prompt_tokens_per_call"]
    assert "(recounted) |" in (tmp_path / "sim.md").read_text()  # the table says where the figure comes from


def test_the_recorded_peer_budget_changes_only_when_a_peer_runs(tmp_path):
    """Each peer row keeps its budget in its config; the settings' figure is the last peer run's, not a rerun's."""
    assert _run(tmp_path, "baseline,gepa", "--peer-budget", "60")["settings"]["peer_budget"] == 60
    assert _run(tmp_path, "baseline,gepa,teacher", "--peer-budget", "90")["settings"]["peer_budget"] == 60
