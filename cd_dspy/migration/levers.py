"""The levers `migrate` compares on one held-out split: ways to make the cheaper target do the source's job.

    target    the target as is (the baseline every lever is tested against; always compared)
    cd        Concept Distillation with its default settings (compiled by `migrate` in run_dir/compile)
    demos     teacher demonstrations: `dspy.BootstrapFewShot(metric, teacher_settings={"lm": source},
              max_bootstrapped_demos=4, max_labeled_demos=0)`: the source's accepted traces as demos in the prompt
    sft       LoRA SFT of the target's weights on the source's accepted traces (`dspy.BootstrapFinetune` through the
              project's provider, `cd_dspy.distill.provider`); only for a local GGUF target with the `distill`
              extra importable, otherwise listed as not applicable with the reason
    combined  BetterTogether's order, prompt -> weights -> prompt, composed from the others: the demos lever's
              program, SFT on that demo program's accepted traces (run on the source), then demos again with the
              same teacher (as BetterTogether passes one teacher to every step); its one-time cost includes the
              demos step

Each lever's compile is resumable: `levers/<name>/state.json` holds its status, the key of its inputs (program,
trainset, metric, LMs, settings), its one-time usage and provenance; `levers/<name>/program.json` the program
without LMs (they are bound again on load); `levers/<name>/calls.jsonl` the LM seconds of its compile's calls.
A rerun with the same inputs loads a finished lever without an LM call; a failed lever is recorded as failed (with
the error) and retried on the next run, never loaded as finished. The SFT levers' adapters go to
`levers/<name>/finetune/`. Held-out prompt tokens per call are kept in `levers/prompt_tokens.json`
(`costs.PromptCounts`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.provider import Provider

from cd_dspy.core.failures import is_fatal
from cd_dspy.core.keys import digest, examples_key, lm_state, metric_key, program_key
from cd_dspy.core.run_dir import RunDir
from cd_dspy.core.usage import UsageMeter
from cd_dspy.migration.costs import CompileClock
from cd_dspy.phases.integrate import load_program, save_program

logger = logging.getLogger("cd_dspy")

LEVERS = ("target", "cd", "demos", "sft", "combined")
LABELS = {"target": "target as is", "cd": "CD", "demos": "teacher demos", "sft": "LoRA SFT",
          "combined": "demos → SFT → demos"}
RUN_OF = {"target": "target_before", "cd": "target_after", "demos": "demos", "sft": "sft", "combined": "combined"}
LEVER_FILES = frozenset({"levers", "plots/levers.png"})  # what migrate writes besides run_dir.MIGRATE_FILES
FINISHED, FAILED, NOT_APPLICABLE = "finished", "failed", "not applicable"
DEMOS = {"max_bootstrapped_demos": 4, "max_labeled_demos": 0}


def parse_levers(spec: str | Sequence[str] | None) -> list[str]:
    """The levers to compare, in LEVERS order, the target as is always among them: None or "all" means every
    lever; otherwise names, as a list or comma-separated. An unknown name raises ValueError naming the choices."""
    if spec is None or spec == "all" or (not isinstance(spec, str) and list(spec) == ["all"]):
        return list(LEVERS)
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    unknown = [n for n in names if n not in LEVERS]
    if unknown or not any(names):
        raise ValueError(f"unknown lever{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown)) or '(none)'}"
                         f" in levers; choose from {', '.join(LEVERS)} (comma-separated), or all.")
    return [n for n in LEVERS if n in names or n == "target"]


@dataclass
class Lever:
    """One lever's compile: its status (finished, failed, not applicable), the reason when it did not finish, what
    it cost once (calls by role with the model that played it, LM seconds, training seconds) and its provenance."""

    name: str
    status: str
    reason: str = ""
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)  # teacher/target -> RoleUsage fields + model
    seconds: dict[str, float] = field(default_factory=dict)  # LM seconds by role
    train_seconds: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    builds_on: list[str] = field(default_factory=list)  # levers whose one-time cost this one includes
    program: Any = field(default=None, repr=False, compare=False)  # the compiled program (not saved here)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "program"}  # no deep copy


# -- the SFT lever's weights ------------------------------------------------------------------------
class WeightsBackend:
    """How the SFT lever trains and serves the target's weights (`LocalLoraBackend` for local GGUF targets)."""

    def finetunable(self, target: dspy.LM, directory: Path) -> dspy.LM:
        """A copy of `target` whose `finetune` (a DSPy provider) trains it, writing under `directory`."""
        raise NotImplementedError

    def saved(self, tuned: dspy.LM) -> dict[str, Any]:
        """What `restore` needs to serve `tuned` again (JSON)."""
        raise NotImplementedError

    def restore(self, target: dspy.LM, saved: dict[str, Any]) -> dspy.LM:
        raise NotImplementedError


class LocalLoraBackend(WeightsBackend):
    """LoRA on the CPU with `LocalLoraProvider`, served by the project's llama.cpp engine with the adapter."""

    def finetunable(self, target: dspy.LM, directory: Path) -> dspy.LM:
        from cd_dspy.distill.provider import LocalLoraProvider

        return target.copy(provider=LocalLoraProvider(directory), finetuning_model=target.engine.dump_state()["model"])

    def saved(self, tuned: dspy.LM) -> dict[str, Any]:
        return {"model": tuned.model, "lora_path": tuned.engine.lora_path}

    def restore(self, target: dspy.LM, saved: dict[str, Any]) -> dspy.LM:
        from cd_dspy.distill.provider import with_adapter

        return with_adapter(target, saved["lora_path"])


def weights_backend(target: dspy.LM) -> tuple[WeightsBackend | None, str]:
    """(the backend, "") when the SFT lever applies to `target`, else (None, the reason)."""
    from cd_dspy.lms import LlamaCppEngine

    if not isinstance(getattr(target, "engine", None), LlamaCppEngine):
        return None, (f"the target {target.model} is not a local GGUF model (cd_dspy.lms.local_lm): LoRA SFT trains "
                      "the target's own weights, which only a local model exposes here")
    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        return None, (f"the distill extra is not installed ({', '.join(missing)} missing): pip install "
                      "'cd-dspy[distill]'")
    return LocalLoraBackend(), ""


class _TimedProvider(Provider):
    """Delegates to the LM's provider and notes each fine-tune: its training records, seconds and files."""

    def __init__(self, inner: Provider):
        super().__init__()
        self.inner, self.finetunable, self.TrainingJob = inner, inner.finetunable, inner.TrainingJob
        self.trainings: list[dict[str, Any]] = []

    def launch(self, lm: Any, launch_kwargs: Any = None) -> None:
        self.inner.launch(lm, launch_kwargs)

    def kill(self, lm: Any, launch_kwargs: Any = None) -> None:
        self.inner.kill(lm, launch_kwargs)

    def finetune(self, job: Any, model: str, train_data: list[dict[str, Any]], train_data_format: Any,
                 train_kwargs: dict[str, Any] | None = None) -> str:
        started = time.perf_counter()
        try:
            return self.inner.finetune(job, model, train_data, train_data_format, train_kwargs)
        finally:
            report = getattr(job, "report", None)
            self.trainings.append({"records": len(train_data or []), "seconds": round(time.perf_counter() - started, 3),
                                   "output_dir": str(getattr(job, "output_dir", None) or ""),
                                   "report": report.to_dict() if hasattr(report, "to_dict") else None})


# -- compiling the levers ----------------------------------------------------------------------------
def bind(compiled: dspy.Module, original: dspy.Module, lm: Any) -> dspy.Module:
    """Give each predictor of `compiled` the LM its counterpart in `original` has of its own, else `lm`."""
    for (_, pred), (_, orig) in zip(compiled.named_predictors(), original.named_predictors(), strict=True):
        pred.lm = orig.lm or lm
    return compiled


def _add_cost(lever: Lever, part: Lever) -> None:
    """Add `part`'s one-time usage, LM seconds and training seconds to `lever`'s."""
    for role, used in part.usage.items():
        mine = lever.usage.setdefault(role, {"model": used["model"]})
        for k in ("calls", "cached_calls", "prompt_tokens", "completion_tokens", "cost_usd"):
            mine[k] = mine.get(k, 0) + used.get(k, 0)
    for role, value in part.seconds.items():
        lever.seconds[role] = round(lever.seconds.get(role, 0.0) + value, 4)
    lever.train_seconds += part.train_seconds


def _bare(program: dspy.Module) -> dspy.Module:
    bare = program.deepcopy()
    bare.set_lm(None)
    return bare


class _RoleMeter(UsageMeter):
    """A UsageMeter whose "teacher" is the source by identity or by model name (DSPy's optimizers copy programs,
    and their LMs with them)."""

    def __init__(self, source: dspy.LM, target: dspy.LM):
        super().__init__(source)
        self.source, self.by_name = source, source.model != target.model

    def role_of(self, lm: Any) -> str:
        same = lm is self.source or (self.by_name and getattr(lm, "model", None) == self.source.model)
        return "teacher" if same else "target"


@dataclass
class Built:
    """A lever's compiled program, what serves its tuned weights again (None: the target's own), its provenance
    and its training seconds."""

    program: dspy.Module
    tuned: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0
    lm: Any = None  # the tuned LM


@dataclass
class LeverContext:
    """What every lever compiles from; `compile(name)` runs (or loads) one lever's compile."""

    program: dspy.Module
    source: dspy.LM
    target: dspy.LM
    metric: Callable
    trainset: Sequence[dspy.Example]
    run: RunDir
    num_threads: int = 1
    backend: WeightsBackend | None = None
    backend_reason: str = ""
    train_kwargs: dict[str, Any] | None = None
    done: dict[str, Lever] = field(default_factory=dict)

    def key(self, name: str) -> str:
        settings: list[Any] = [DEMOS] if name in ("demos", "combined") else []
        if name in ("sft", "combined"):
            settings += [type(self.backend).__name__, self.train_kwargs]
        if name == "combined":
            settings.append(self.key("demos"))
        return digest([name, program_key(self.program), examples_key(self.trainset), metric_key(self.metric),
                       lm_state(self.source), lm_state(self.target), settings])

    def compile(self, name: str) -> Lever:
        """The lever's compile: loaded when a finished one with the same inputs is stored, else run now. A failure
        is recorded as failed (a fatal LM failure, `failures.is_fatal`, is raised again after that)."""
        if name in self.done:
            return self.done[name]
        if name in ("sft", "combined") and self.backend is None:
            reason = self.backend_reason if name == "sft" else f"it needs the SFT lever: {self.backend_reason}"
            return self.done.setdefault(name, Lever(name, NOT_APPLICABLE, reason))
        folder, key = f"levers/{name}", self.key(name)
        state = self.run.read_json(f"{folder}/state.json") if self.run.exists(f"{folder}/state.json") else {}
        if state.get("status") == FINISHED and state.get("key") == key and self.run.exists(f"{folder}/program.json"):
            lever = Lever(**{k: v for k, v in state.items() if k not in ("key", "tuned")})
            try:
                lever.program = self._load(folder, state.get("tuned"))
                logger.info("Lever %s: finished in an earlier run; loaded from %s.", name, self.run.file(folder))
                return self.done.setdefault(name, lever)
            except Exception as exc:  # e.g. its adapter file is gone: compile it again
                logger.warning("Lever %s: cannot load its earlier compile (%s); compiling it again.", name, exc)
        if name == "combined":
            self.compile("demos")  # its first step, outside the combined lever's own accounting
        return self.done.setdefault(name, self._attempt(name, folder, key))

    def _attempt(self, name: str, folder: str, key: str) -> Lever:
        meter = _RoleMeter(self.source, self.target)
        self.run.write_text(f"{folder}/calls.jsonl", "")  # this attempt's calls (LM seconds by role)
        clock = CompileClock(self.run, self.source, log_name=f"{folder}/calls.jsonl", role_of=meter.role_of)
        lever, built, error = Lever(name, FAILED, "interrupted", builds_on=["demos"] if name == "combined" else []), \
            None, None
        try:
            with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), meter, clock], usage_tracker=meter), \
                    contextlib.redirect_stdout(sys.stderr):  # BootstrapFewShot prints its tally
                built = getattr(self, f"_{name}")()
            save_program(_bare(built.program), self.run.own(f"{folder}/program.json"))
            lever.status, lever.reason, lever.program = FINISHED, "", built.program
            lever.provenance, lever.train_seconds = built.provenance, built.train_seconds
        except Exception as exc:
            error, lever.reason = exc, f"{type(exc).__name__}: {exc}"[:1000]
            logger.warning("Lever %s failed (%s); it is reported as failed and retried on the next run.", name,
                           lever.reason)
        finally:  # also when interrupted: the state says failed, never finished
            lever.usage = {role: {**u.to_dict(), "model": (self.source if role == "teacher" else self.target).model}
                           for role, u in meter.snapshot().items()}
            lever.seconds = clock.seconds()
            for part in [self.done[n] for n in lever.builds_on if n in self.done]:  # its one-time cost is ours too
                _add_cost(lever, part)
            self.run.write_json(f"{folder}/state.json", {**lever.to_dict(), "key": key,
                                                         "tuned": built.tuned if built else None})
        if error is not None and is_fatal(error):
            raise error
        return lever

    def _load(self, folder: str, tuned: dict[str, Any] | None) -> dspy.Module:
        lm = self.backend.restore(self.target, tuned) if tuned is not None else self.target
        loaded = load_program(self.program.deepcopy(), self.run.file(f"{folder}/program.json"),
                              allow_unsafe_lm_state=True)
        return bind(loaded, self.program, lm)

    def _demos(self, lm: Any = None) -> Built:
        """BootstrapFewShot with the source as teacher (the program's own predictors run on it through
        teacher_settings), bound to `lm` (default: the target); each demo's provenance is its training example."""
        optimizer = dspy.BootstrapFewShot(metric=self.metric, teacher_settings={"lm": self.source}, **DEMOS)
        compiled = bind(optimizer.compile(self.program.deepcopy(), trainset=list(self.trainset)), self.program,
                        lm or self.target)

        def origin(demo: dspy.Example) -> int | None:
            return next((i for i, e in enumerate(self.trainset)
                         if all(demo.get(k) == v for k, v in e.inputs().items())), None)

        demos = [{"predictor": name, "train_index": origin(d),
                  "demo": {k: v for k, v in d.items() if k != "augmented"}}
                 for name, pred in compiled.named_predictors() for d in pred.demos]
        return Built(compiled, provenance={"demos": demos, "teacher": self.source.model, **DEMOS})

    def _sft(self, student: dspy.Module | None = None, folder: str = "levers/sft") -> Built:
        """BootstrapFinetune: the teacher program (`student`'s prompts on the source) writes the traces the metric
        accepts; the target's weights are trained on them, and the program is served with the tuned target."""
        base = student or self.program
        finetunable = self.backend.finetunable(self.target, self.run.own(f"{folder}/finetune"))
        timed = finetunable.provider = _TimedProvider(finetunable.provider)
        optimizer = dspy.BootstrapFinetune(metric=self.metric, num_threads=self.num_threads,
                                           train_kwargs=self.train_kwargs)
        compiled = optimizer.compile(bind(base.deepcopy(), self.program, finetunable), trainset=list(self.trainset),
                                     teacher=bind(base.deepcopy(), self.program, self.source))
        tuned = next((p.lm for (_, p), (_, o) in zip(compiled.named_predictors(), self.program.named_predictors(),
                                                     strict=True) if o.lm is None), None)
        if tuned is None:
            raise ValueError("every predictor of the program has its own LM: there is no target weight to train.")
        return Built(bind(compiled, self.program, tuned), self.backend.saved(tuned),
                     {"tuned_model": tuned.model, "teacher": self.source.model, "trainings": timed.trainings},
                     sum(t["seconds"] for t in timed.trainings), tuned)

    def _combined(self) -> Built:
        demos = self.done["demos"]
        if demos.status != FINISHED:
            raise RuntimeError(f"its first step, the demos lever, did not finish: {demos.reason}")
        weights = self._sft(demos.program, folder="levers/combined")
        again = self._demos(lm=weights.lm)
        steps = [{"step": "demos (the demos lever's program)", "demos": len(demos.provenance.get("demos", []))},
                 {"step": "SFT on the demo program's accepted traces", **weights.provenance},
                 {"step": "demos again (same teacher)", **again.provenance}]
        return Built(again.program, weights.tuned, {"steps": steps}, weights.train_seconds, weights.lm)
