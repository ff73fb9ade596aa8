"""Benchmark Concept Distillation against DSPy's instruction optimizers on one task and one target/teacher pair.

    python examples/benchmark.py --task math --target qwen2.5-coder-0.5b --teacher qwen2.5-coder-1.5b \\
        --train 12 --val 12 --test 30 --trials 6 --methods baseline,cd,inferrules,simba,miprov2,gepa,teacher \\
        --out examples/results/math_local --seed 0
    python examples/benchmark.py --task simulated --out examples/results/simulated   # seconds, no real LM

Every method sees the same splits and the same LMs: the target runs the program, the teacher writes
rules / proposes instructions / reflects. "baseline" is the unoptimized program on the target and
"teacher" the unoptimized program on the teacher (the ceiling; an embedded teacher then answers with the
target's call settings, e.g. max_tokens, not its longer teacher-role ones). Peers run on fresh programs.

Budget matching: run "cd" before the peers. Its measured compile-time target calls B (collect,
verification, search, confirmation; DSPy cache hits included) become the peers' budget: MIPROv2
zero-shot evaluates its default and E - 1 instruction trials on the full val set (E = B / val,
minibatch off) plus bootstrap runs on train for its proposer; GEPA gets max_metric_calls = B;
InferRules evaluates E rule candidates on val; SIMBA (train+val as its trainset, no demos) takes as
many steps as fit in B. A peer run before CD gets the planning estimate train + (trials + 3) * val.
Actual calls are measured and reported.

bettertogether: DSPy's BetterTogether, "p -> w -> p", with p = BootstrapFewShotWithRandomSearch at bootstrap_rs's
setting and w = BootstrapFinetune, whose LoRA cd_dspy's LocalLoraProvider trains on the CPU and serves through
llama.cpp (a local target only; its adapters go to <out>/bettertogether_run).

Statistics: Wilson 95% intervals for held-out scores; each method is compared with the baseline on
the same test problems (paired difference with its interval, exact sign test = McNemar for 0/1).
All methods run under one adapter (--adapter) and see the same input fields of the same examples.

Simulated world (--task simulated): the target/teacher engines of cd_dspy.testing.simulated; the teacher is
extended (bench_lib.BenchTeacher) to solve the task (the ceiling) and to answer peers' prompts with
the same rules it gives CD. The simulated target is deterministic, so SIMBA (which needs varied
trajectories) never calls its prompt model there: its simulated score says nothing about SIMBA.

Writes <out>.json (appended after each method; finished methods are skipped on rerun), <out>.md
and <out>.png. CD keeps its own run directory in <out>/<method>_run (cd_run for the default carrier,
cd_rules_run, cd_exemplars_run, cd_both_run for the carrier ablation, bfs_then_cd_run). Keep cache=True LMs:
reruns are cheap.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

import dspy

from cd_dspy.core.scoring import score_examples
from cd_dspy.core.usage import TARGET, TEACHER, PromptTokenCounter, prompt_tokens
from cd_dspy.programs import ADAPTERS, get_task, make_adapter

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lib import (  # noqa: E402
    CARRIERS,
    INSTRUCTION_ONLY,
    RENAMED,
    SIMULATED,
    BenchMeter,
    add_usage,
    gepa_metric,
    held_out_record,
    is_local_model,
    load_task,
    make_lm,
    measured_budget,
    peer_configs,
    sft_row,
    simulated_lms,
    target_budget,
    usage_dict,
    with_ext,
)
from bench_report import save_all  # noqa: E402

METHODS = ("baseline", "teacher", "cd", "cd_rules", "cd_exemplars", "cd_both", "bfs_then_cd", "bootstrap_fewshot",
           "bootstrap_rs", "miprov2_demos", "simba_demos", "sft_lora", "inferrules_instr", "miprov2_instr",
           "simba_instr", "gepa", "bettertogether")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--task", default="math", help="math | math-plan | humaneval | ... | simulated")
    p.add_argument("--target", default="qwen2.5-coder-0.5b", help="catalog name, .gguf path or litellm model")
    p.add_argument("--teacher", default="qwen2.5-coder-1.5b", help="catalog name, .gguf path or litellm model")
    p.add_argument("--train", type=int, default=12)
    p.add_argument("--val", type=int, default=12)
    p.add_argument("--test", type=int, default=30)
    p.add_argument("--trials", type=int, default=6, help="CD's Optuna trials; peers are budget-matched to it")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--out", default="examples/results/benchmark", help="output prefix (no extension)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="parallel program calls (1 for embedded local LMs)")
    p.add_argument("--adapter", choices=ADAPTERS, default=None,
                   help="DSPy adapter for every method (default: the task's measured best; chat for simulated)")
    p.add_argument("--retry-errors", action="store_true", help="rerun methods recorded with an error")
    p.add_argument("--rerun", default="", help="comma-separated methods to measure again even if recorded ok")
    p.add_argument("--fresh", action="store_true", help="ignore (overwrite) an existing <out>.json")
    p.add_argument("--peer-budget", type=int, default=None,
                   help="target calls for the peers that take a budget (default: CD's measured compile calls, or "
                        "the planning estimate before CD has run)")
    p.add_argument("--sft-results", default=None,
                   help="sft_lora: a distill_compare.json on the same split (examples/distill_compare.py)")
    p.add_argument("--sft-row", default="sft", help="sft_lora: which of its rows (default: its main SFT adapter)")
    p.add_argument("--count-prompts", action="store_true",
                   help="fill in prompt tokens per test call for recorded instruction-only rows measured before they "
                        "were counted: each test request formatted from the recorded instructions, nothing sent")
    args = p.parse_args(argv)
    args.methods = [RENAMED.get(m.strip(), m.strip()) for m in args.methods.split(",") if m.strip()]
    args.rerun = {RENAMED.get(m.strip(), m.strip()) for m in args.rerun.split(",") if m.strip()}
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    return args


class Benchmark:
    """Compiles and tests each method on one task, target and teacher."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        sizes = {"train": args.train, "val": args.val, "test": args.test}
        self.task = load_task(args.task, args.seed, sizes)
        self.train, self.val, self.test = (self.task.splits[k] for k in ("train", "val", "test"))
        if args.task == SIMULATED:
            self.target, self.teacher = simulated_lms()
            self.teacher_alone = self.teacher
        else:
            self.target, self.teacher = make_lm(args.target, "target"), make_lm(args.teacher, "teacher")
            self.teacher_alone = make_lm(args.teacher, "target")  # the program's calls on equal terms (max_tokens)
        self.adapter_name = args.adapter or ("chat" if args.task == SIMULATED else get_task(args.task).adapter)
        self.peer_budget = target_budget(len(self.train), len(self.val), args.trials)  # until CD has run
        self.baseline_scores: list[float] | None = None  # set by main(): the sft_lora row is checked against it
        self.student_settings: dict = {}  # local_lm settings of the bettertogether row's trained target

    @property
    def peers(self) -> dict[str, dict]:
        return peer_configs(len(self.train), len(self.val), self.peer_budget, self.args.threads, self.args.seed)

    def settings(self) -> dict:
        a = self.args
        return {"task": a.task, "target": a.target if a.task != SIMULATED else "simulated-target",
                "teacher": a.teacher if a.task != SIMULATED else "simulated-teacher", "trials": a.trials,
                "seed": a.seed, "threads": a.threads, "adapter": self.adapter_name,
                "planned_peer_budget": target_budget(len(self.train), len(self.val), a.trials),
                "dspy_version": dspy.__version__}

    def _context(self, lm: dspy.LM, meter: BenchMeter, *more_callbacks):
        return dspy.context(lm=lm, callbacks=[*dspy.settings.get("callbacks", []), meter, *more_callbacks],
                            usage_tracker=meter,
                            adapter=self.adapter(), max_errors=10**6)  # a parse failure scores 0, not an abort

    def adapter(self) -> dspy.Adapter:
        return make_adapter(self.adapter_name)

    # -- compile ---------------------------------------------------------------------------------
    def compile(self, method: str, meter: BenchMeter) -> tuple[dspy.Module, dict]:
        """The compiled program for `method` and method-specific details."""
        program = self.task.make_program()  # fresh for every method (InferRules mutates its input)
        cfg = self.peers.get(method, {})
        init, comp = cfg.get("init", {}), cfg.get("compile", {})
        if method in ("baseline", "teacher"):
            return program, {}
        if method == "cd" or method.startswith("cd_"):  # cd: CD's default carrier; cd_<carrier>: that carrier
            return self._compile_cd(program, method)
        if method == "bfs_then_cd":  # the recipe "BootstrapFewShot, then CD" on its residual mistakes
            with self._context(self.target, meter):
                program = dspy.BootstrapFewShot(metric=self.task.metric, teacher_settings={"lm": self.teacher},
                                                **self.peers["bootstrap_fewshot"]["init"]).compile(
                    program, trainset=self.train)
            compiled, info = self._compile_cd(program, method)
            info["usage"] = add_usage(usage_dict(meter.snapshot()), info["usage"])  # BootstrapFewShot's calls too
            return compiled, info
        if method == "sft_lora":
            return program, sft_row(self.args, self.test, self.baseline_scores)
        with self._context(self.target, meter):
            if method == "bettertogether":
                return self._compile_bettertogether(program, init, comp)
            teacher_settings = {"lm": self.teacher}  # how DSPy's docs wire a teacher LM into bootstrapping
            if method == "bootstrap_fewshot":
                opt = dspy.BootstrapFewShot(metric=self.task.metric, teacher_settings=teacher_settings, **init)
                return opt.compile(program, trainset=self.train), {}
            if method == "bootstrap_rs":
                opt = dspy.BootstrapFewShotWithRandomSearch(metric=self.task.metric, teacher_settings=teacher_settings,
                                                            **init)
                return opt.compile(program, trainset=self.train, valset=self.val), {}
            if method == "inferrules_instr":
                from dspy.teleprompt import InferRules

                opt = InferRules(metric=self.task.metric, teacher_settings={"lm": self.teacher}, **init)
                return opt.compile(program, trainset=self.train, valset=self.val), {}
            if method in ("simba_instr", "simba_demos"):
                demos = {"teacher_settings": teacher_settings} if method == "simba_demos" else {}
                opt = dspy.SIMBA(metric=self.task.metric_with_feedback, prompt_model=self.teacher, **demos, **init)
                return opt.compile(program, trainset=self.train + self.val, seed=self.args.seed), {}
            if method in ("miprov2_instr", "miprov2_demos"):
                demos = {"teacher_settings": teacher_settings} if method == "miprov2_demos" else {}
                opt = dspy.MIPROv2(metric=self.task.metric, prompt_model=self.teacher, task_model=self.target,
                                   **demos, **init)
                return opt.compile(program, trainset=self.train, valset=self.val, **comp), {}
            if method == "gepa":
                opt = dspy.GEPA(metric=gepa_metric(self.task.metric_with_feedback), reflection_lm=self.teacher,
                                **init)
                return opt.compile(program, trainset=self.train, valset=self.val), {}
        raise ValueError(method)

    def _compile_bettertogether(self, program: dspy.Module, init: dict, comp: dict) -> tuple[dspy.Module, dict]:
        """DSPy's BetterTogether (prompt -> weights -> prompt) on a target served by cd_dspy's LoRA provider. The
        teacher reaches the prompt step as `teacher_settings` (as in the bootstrap_rs row) and the weight step as
        the teacher program: BetterTogether hands its `teacher=` on as a list, which BootstrapFinetune takes and
        BootstrapFewShotWithRandomSearch does not (DSPy 3.4.1: "'list' object has no attribute 'deepcopy'")."""
        from cd_dspy.distill import finetunable_lm

        if self.args.task == SIMULATED or not is_local_model(self.args.target):
            raise ValueError("bettertogether trains LoRA weights: the target must be a local model (a catalog name "
                             f"or a .gguf path), got {self.args.target!r}.")
        student_lm = finetunable_lm(self.args.target, directory=self.out / "bettertogether_run",
                                    **self.student_settings)  # make_lm's target, with a LoRA provider
        program.set_lm(student_lm)  # BetterTogether and BootstrapFinetune need every predictor's LM set
        teacher = self.task.make_program()
        teacher.set_lm(self.teacher)
        optimizer = dspy.BetterTogether(
            metric=self.task.metric,
            p=dspy.BootstrapFewShotWithRandomSearch(metric=self.task.metric, teacher_settings={"lm": self.teacher},
                                                    **init["p"]),
            w=dspy.BootstrapFinetune(metric=self.task.metric, **init["w"]))
        compiled = optimizer.compile(program, trainset=self.train, valset=self.val,
                                     optimizer_compile_args={"w": {"teacher": teacher}}, **comp)
        if compiled.flag_compilation_error_occurred:  # BetterTogether logs a failed step and returns the best so far
            raise RuntimeError("a BetterTogether step failed (see its log); not recorded as a result")
        steps = [{"strategy": c["strategy"] or "(unoptimized)", "val_score": c["score"],
                  "lora": getattr(c["program"].predictors()[0].lm.engine, "lora_path", None)}
                 for c in compiled.candidate_programs]
        return compiled, {"message": f"BetterTogether returned {steps[0]['strategy']}: the best on val of "
                                     + ", ".join(f"{s['strategy']} {s['val_score']:.1f}" for s in steps),
                          "steps": steps}

    def _compile_cd(self, program: dspy.Module, method: str) -> tuple[dspy.Module, dict]:
        from cd_dspy import ConceptDistillation

        carrier = {"carrier": method.removeprefix("cd_")} if method.startswith("cd_") else {}  # else the default
        cd = ConceptDistillation(metric=self.task.metric_with_feedback, teacher_lm=self.teacher,
                                 target_lm=self.target, num_trials=self.args.trials, seed=self.args.seed,
                                 num_threads=self.args.threads, run_dir=self.out / f"{method}_run", progress=False,
                                 resume=not self.args.fresh, **carrier)
        with dspy.context(max_errors=10**6, adapter=self.adapter()):
            compiled = cd.compile(program, trainset=self.train, valset=self.val)
        r = cd.result
        # CD's own UsageMeter is the usage tracker inside its compile, so its record is the authoritative count.
        return compiled, {"usage": usage_dict(r.usage), "message": r.message, "val_baseline": r.baseline_score,
                          "val_best": r.best_score, "improved": r.improved,
                          "selected_rules": [x.text for x in r.selected_rules], "n_rules": len(r.rules),
                          "n_mistakes": r.n_mistakes}

    def count_prompts(self, rec: dict) -> float | None:
        """Prompt tokens per test request of a recorded instruction-only row: its recorded instructions on a fresh
        one-predictor program (no demos), each test request formatted by the adapter and counted, no LM call."""
        program = self.task.make_program()
        predictors = program.named_predictors()
        if len(predictors) != 1 or set(rec.get("instructions", {})) != {predictors[0][0]}:
            raise ValueError("--count-prompts needs a one-predictor program and the row's recorded instructions; "
                             "rerun the row (--rerun) to count its prompts instead.")
        name, predictor = predictors[0]
        signature = predictor.signature.with_instructions(rec["instructions"][name])
        adapter = self.adapter()
        counts = [prompt_tokens(self.target, adapter.format(signature, [], example.inputs())) for example in self.test]
        return None if None in counts else sum(counts) / len(counts)

    # -- one method ------------------------------------------------------------------------------
    def run(self, method: str) -> dict:
        rec: dict = {"method": method, "status": "ok", "config": self.peers.get(method, {})}
        started = time.perf_counter()
        meter = BenchMeter(self.teacher, self.target)
        try:
            program, info = self.compile(method, meter)
            compile_usage = info.pop("usage", None) or usage_dict(meter.snapshot())
            imported = info.pop("imported", None)  # a row measured by another script (sft_lora)
            rec.update(info)
            t_compile = time.perf_counter()
            if imported is not None:
                rec["test"] = held_out_record(imported["scores"], None)
                rec["usage"] = {"compile": compile_usage, "test": {}}
                rec["seconds"] = {**imported["seconds"], "total": sum(imported["seconds"].values())}
                return rec
            test_meter, tokens = BenchMeter(self.teacher, self.target), PromptTokenCounter(self.teacher_alone)
            lm = self.teacher_alone if method == "teacher" else self.target
            with self._context(lm, test_meter, tokens):
                # every call made (no stored record skips one): the test's usage and prompt tokens are measured
                scores = score_examples(program, self.test, self.task.metric, self.args.threads).scores
            rec["test"] = held_out_record(scores, None)  # the paired comparison is added when saving
            rec["usage"] = {"compile": compile_usage, "test": usage_dict(test_meter.snapshot())}
            rec["prompt_tokens_per_call"] = tokens.per_call(TEACHER if method == "teacher" else TARGET)
            rec["seconds"] = {"compile": round(t_compile - started, 2),
                              "test": round(time.perf_counter() - t_compile, 2)}
            rec["instructions"] = {name: p.signature.instructions for name, p in program.named_predictors()}
            rec["program_unchanged"] = program.dump_state() == self.task.make_program().dump_state()
        except Exception as exc:  # a crashing method is recorded; the benchmark goes on
            rec.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=8),
                       usage={"compile": usage_dict(meter.snapshot())})
        rec.setdefault("seconds", {})["total"] = round(time.perf_counter() - started, 2)
        return rec


def load_previous(out: Path, settings: dict, fresh: bool) -> dict | None:
    """The earlier results for the same settings (resume), or None."""
    path = with_ext(out, ".json")
    if fresh or not path.exists():
        return None
    data = json.loads(path.read_text())
    for old_name, new_name in RENAMED.items():  # records of the instruction-only runs, under their new names
        if old_name in data.get("methods", {}):
            data["methods"][new_name] = data["methods"].pop(old_name)
        data["planned"] = [RENAMED.get(m, m) for m in data.get("planned", [])]
    keys = ("task", "target", "teacher", "trials", "seed")
    old, new = ({k: d.get(k) for k in keys} for d in (data.get("settings", {}), settings))
    if old != new or data.get("splits") != settings.get("_splits"):
        raise SystemExit(f"{path} holds results for other settings ({old}, splits {data.get('splits')}); "
                         "use another --out or pass --fresh.")
    return data


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns the JSON-ready results (also written to <out>.json/.md/.png)."""
    args = parse_args(argv)
    bench = Benchmark(args)
    settings = bench.settings()
    splits = {k: len(v) for k, v in bench.task.splits.items()}
    command = shlex.join(["python", "examples/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    data = load_previous(bench.out, {**settings, "_splits": splits}, args.fresh) or {"methods": {}}
    commands = data.get("commands") or ([data["command"]] if data.get("command") else [])
    if "peer_budget" in data.get("settings", {}):  # kept until a peer runs again
        settings["peer_budget"] = data["settings"]["peer_budget"]
    data.update(settings=settings, splits=splits, command=command, commands=list(dict.fromkeys([*commands, command])),
                planned=list(dict.fromkeys([*data.get("planned", []), *args.methods])))
    for method in args.methods:
        bench.peer_budget = args.peer_budget or measured_budget(data["methods"]) or bench.peer_budget
        prev = data["methods"].get(method)
        if args.count_prompts and prev and prev.get("status") == "ok" and prev.get("prompt_tokens_per_call") is None:
            if CARRIERS.get(method) in INSTRUCTION_ONLY:
                prev["prompt_tokens_per_call"] = bench.count_prompts(prev)
                prev["prompt_tokens_counted"] = "formatted from the recorded instructions (--count-prompts)"
        if prev is not None and method not in args.rerun and (prev.get("status") == "ok" or not args.retry_errors):
            print(f"[benchmark] {method}: already in {with_ext(bench.out, '.json')}, skipped")
            continue
        print(f"[benchmark] {method}: running")
        if method in bench.peers:  # the budget of the latest peer run (each row keeps its own in its config)
            data["settings"]["peer_budget"] = bench.peer_budget
        bench.baseline_scores = (data["methods"].get("baseline", {}).get("test") or {}).get("scores")
        rec = bench.run(method)
        rec["command"] = command  # the invocation that measured this row (a benchmark may take several)
        data["methods"][method] = rec
        save_all(data, bench.out)
        score = f"{rec['test']['score']:.1f}" if rec["status"] == "ok" else rec["error"]
        print(f"[benchmark] {method}: {score} ({rec['seconds']['total']:.1f}s)")
    save_all(data, bench.out)
    print(with_ext(bench.out, ".md").read_text())
    return data


if __name__ == "__main__":
    main()
