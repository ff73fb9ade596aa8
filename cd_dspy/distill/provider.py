"""A DSPy fine-tuning provider for the local GGUF models: `dspy.BootstrapFinetune` (and the weight step of
`dspy.BetterTogether`) trains a LoRA adapter with the project's trainer on the CPU, converts it with llama.cpp's
own script (`convert_lora`) and serves it through the project's llama.cpp engine.

How DSPy reaches it: `BootstrapFinetune` calls `lm.finetune(train_data, "chat", train_kwargs)`; `dspy.LM` builds
`provider.TrainingJob(...)`, runs `provider.finetune(job, model=lm.finetuning_model or lm.model, ...)` on a thread
and delivers `lm.copy(model=<returned name>)` as the job's result, which the compiled predictors then use.

- Training weights: `model` is the LM's `finetuning_model`, a catalog name or .gguf path (loaded through
  transformers, dequantized) or a Hugging Face model directory; `finetunable_lm` sets it to the served model,
  so the adapter is trained on the weights llama.cpp serves.
- The returned name is the one `cd_dspy.lms.local_lm` (and `pipeline.serve`) gives that model with the adapter,
  `local/<model>+lora-<digest of the adapter file>`: a new name, so DSPy's cache never answers the tuned model
  with the base model's replies and BetterTogether sees the model change. No new name syntax is parsed.
- Serving: `LM.copy(model=...)` keeps the base LM's engine, which knows nothing of the adapter, and DSPy gives the
  provider no other hook on the returned LM. `LoraTrainingJob.set_result`, where DSPy hands that copy back,
  swaps in the engine `local_lm(model, lora_path=<adapter.gguf>)` builds, with the base engine's settings; the
  LM keeps its other settings. The engine's state holds the adapter path, so a saved program loads it back.

Adapted at the edge (DSPy's local path assumes an SGLang server and a GPU): `launch` and `kill` do nothing (the
engine loads the GGUF in-process on the first call); training is LoRA SFT in float32 on the CPU, one record per
step (DSPy's `per_device_train_batch_size` becomes `gradient_accumulation_steps`); DSPy's train_kwargs names are
mapped to TrainSettings/LoraSettings (`TRAIN_KWARGS`), unknown keys are refused. Chat data only (DSPy's records
carry no teacher log-probabilities, so no KD). Each fine-tune trains a fresh adapter on the base weights, also
when the LM already serves one (BetterTogether's "w -> w"): adapters are not stacked. Files go to
`<directory>/<model>-<id>/` (train.jsonl, adapter/, adapter.gguf); the default directory is DSPy's finetune dir.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.provider import Provider, TrainingJob
from dspy.clients.utils_finetune import TrainDataFormat, TrainingStatus, find_data_error_chat, get_finetune_directory

from cd_dspy.distill.convert import convert_lora
from cd_dspy.distill.data import DistillRecord, write_jsonl
from cd_dspy.distill.train import LoraSettings, TrainReport, TrainSettings

# train_kwargs key -> (settings class, field); DSPy's and Hugging Face's names next to the project's own
TRAIN_KWARGS: dict[str, tuple[str, str]] = {
    **{k: ("train", k) for k in ("epochs", "max_steps", "lr", "grad_accum", "seed", "max_length", "threads")},
    **{k: ("lora", k) for k in ("rank", "alpha", "dropout", "targets")},
    "num_train_epochs": ("train", "epochs"), "learning_rate": ("train", "lr"),
    "gradient_accumulation_steps": ("train", "grad_accum"), "per_device_train_batch_size": ("run", "batch"),
    "max_seq_length": ("train", "max_length"), "lora_rank": ("lora", "rank"), "r": ("lora", "rank"),
    "lora_alpha": ("lora", "alpha"), "lora_dropout": ("lora", "dropout"), "target_modules": ("lora", "targets"),
    "output_dir": ("run", "output_dir"), "outtype": ("run", "outtype"), "use_peft": ("run", "use_peft"),
}


def split_train_kwargs(train_kwargs: Mapping[str, Any] | None) -> tuple[TrainSettings, LoraSettings, dict[str, Any]]:
    """DSPy's train_kwargs -> (TrainSettings, LoraSettings, run options); unknown keys raise ValueError."""
    parts: dict[str, dict[str, Any]] = {"train": {}, "lora": {}, "run": {}}
    unknown = sorted(set(train_kwargs or {}) - set(TRAIN_KWARGS))
    if unknown:
        raise ValueError(f"LocalLoraProvider does not know the train_kwargs {unknown}; it accepts "
                         f"{', '.join(sorted(TRAIN_KWARGS))}.")
    for key, value in (train_kwargs or {}).items():
        part, name = TRAIN_KWARGS[key]
        if name in parts[part] and parts[part][name] != value:
            raise ValueError(f"train_kwargs set {part} setting {name!r} twice with different values ({key}={value!r}).")
        parts[part][name] = value
    if parts["run"].pop("use_peft", True) is not True:
        raise ValueError("LocalLoraProvider trains LoRA adapters only (use_peft=True); full fine-tuning is not offered "
                         "on the CPU.")
    if (batch := parts["run"].pop("batch", 1)) != 1:  # one record per step: a batch of n is n accumulated steps
        parts["train"]["grad_accum"] = parts["train"].get("grad_accum", 1) * batch
    if "targets" in parts["lora"]:
        parts["lora"]["targets"] = tuple(parts["lora"]["targets"])
    return TrainSettings(mode="sft", **parts["train"]), LoraSettings(**parts["lora"]), parts["run"]


def chat_records(train_data: list[dict[str, Any]],
                 train_data_format: TrainDataFormat | str | None) -> list[DistillRecord]:
    """DSPy's chat records (`{"messages": [...]}`, the reply last) -> the project's training records."""
    fmt = getattr(train_data_format, "value", train_data_format)
    if fmt != TrainDataFormat.CHAT.value:
        raise ValueError(f"LocalLoraProvider trains on chat data only, got train_data_format={fmt!r}; let DSPy write "
                         "chat records (BootstrapFinetune with a ChatAdapter or JSONAdapter, the default).")
    if not train_data:
        raise ValueError("no training data: the metric rejected every bootstrapped trace (or the trainset is empty); "
                         "check the metric and the teacher program.")
    records = []
    for index, item in enumerate(train_data):
        error = find_data_error_chat(item) if isinstance(item, dict) else f"not a dict but {type(item).__name__}"
        if not error and (not item["messages"] or item["messages"][-1]["role"] != "assistant"):
            error = "the last message must be the assistant's reply"
        if error:
            raise ValueError(f"training record {index} is not chat data: {error}.")
        messages = [{"role": m["role"], "content": m["content"]} for m in item["messages"]]
        records.append(DistillRecord(messages=messages, teacher_messages=messages[:-1], example_index=index,
                                     predictor="", score=1.0))
    return records


def _served_name(model: str, adapter_gguf: Path) -> str:
    """The name `local_lm` gives `model` with the adapter; a Hugging Face directory's name when not servable."""
    from cd_dspy.lms import CATALOG, local_lm

    if model in CATALOG or (model.endswith(".gguf") and Path(model).expanduser().is_file()):
        return local_lm(model, lora_path=str(adapter_gguf)).model
    return f"local/{Path(model).name}+lora-{adapter_gguf.parent.name}"


class LoraTrainingJob(TrainingJob):
    """DSPy's job future, with the run's files and report; its result is the LM served with the adapter."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.output_dir: Path | None = None
        self.adapter_gguf: Path | None = None
        self.report: TrainReport | None = None
        self._status = TrainingStatus.pending

    def status(self) -> TrainingStatus:
        return self._status

    def set_result(self, result: Any) -> None:
        """DSPy sets `lm.copy(model=<tuned name>)`, still on the base engine: serve the adapter instead."""
        if isinstance(result, dspy.LM) and self.adapter_gguf is not None:
            result = with_adapter(result, self.adapter_gguf)
        self._status = TrainingStatus.failed if isinstance(result, Exception) else TrainingStatus.succeeded
        super().set_result(result)


def with_adapter(lm: dspy.LM, adapter_gguf: str | Path) -> dspy.LM:
    """A copy of `lm` (on the project's llama.cpp engine) that serves the LoRA adapter, under `local_lm`'s name."""
    from cd_dspy.lms import LlamaCppEngine, local_lm

    engine = lm.engine
    if not isinstance(engine, LlamaCppEngine):
        raise TypeError(f"LocalLoraProvider serves through cd_dspy's LlamaCppEngine, but {lm.model!r} runs on "
                        f"{type(engine).__name__}; build the LM with cd_dspy.distill.finetunable_lm(...).")
    state = engine.dump_state()
    model = state.pop("model")
    state["lora_path"] = str(adapter_gguf)
    tuned = local_lm(model, **state)
    return lm.copy(model=tuned.model, engine=tuned.engine)


class LocalLoraProvider(Provider):
    """Fine-tunes the local GGUF models with LoRA on the CPU and serves them with llama.cpp (module docstring)."""

    def __init__(self, directory: str | Path | None = None):
        super().__init__()
        self.finetunable = True
        self.TrainingJob = LoraTrainingJob
        self.directory = Path(directory) if directory is not None else None

    def finetune(self, job: TrainingJob, model: str, train_data: list[dict[str, Any]],
                 train_data_format: TrainDataFormat | str | None, train_kwargs: dict[str, Any] | None = None) -> str:
        """Train a LoRA adapter on DSPy's chat records, convert it to GGUF; return the tuned model's name."""
        from cd_dspy.distill.student import load_student
        from cd_dspy.distill.train import LoraTrainer

        job._status = TrainingStatus.running
        if str(model).startswith("local/"):
            raise ValueError(f"cannot load {model!r} for training: set the LM's finetuning_model to the GGUF path or "
                             "catalog name (cd_dspy.distill.finetunable_lm does).")
        records = chat_records(train_data, train_data_format)
        settings, lora, run = split_train_kwargs(train_kwargs)
        root = Path(run.get("output_dir") or self.directory or Path(get_finetune_directory()) / "cd-dspy-lora")
        root.mkdir(parents=True, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix=f"{Path(str(model)).stem}-", dir=root))
        write_jsonl(records, out / "train.jsonl")
        student, tokenizer = load_student(model)
        trainer = LoraTrainer(student, tokenizer, lora, seed=settings.seed)
        report = trainer.train(records, settings, adapter_dir=out / "adapter")
        gguf = convert_lora(out / "adapter", out / "adapter.gguf", outtype=run.get("outtype", "f32"))
        if isinstance(job, LoraTrainingJob):
            job.output_dir, job.adapter_gguf, job.report = out, gguf, report
        return _served_name(str(model), gguf)

    def __repr__(self) -> str:
        return f"LocalLoraProvider(directory={str(self.directory) if self.directory else None!r})"


def finetunable_lm(target: str | Path, *, student: str | Path | None = None, directory: str | Path | None = None,
                   **settings: Any) -> dspy.LM:
    """`local_lm(target, role="target", **settings)` wired to `LocalLoraProvider(directory)`: `lm.finetune` (and so
    BootstrapFinetune) trains a LoRA on `student` (default: the target's own GGUF) and serves it on the target.
    `train_kwargs={...}` here are the defaults when BootstrapFinetune is given none."""
    from cd_dspy.lms import local_lm

    return local_lm(target, role="target", provider=LocalLoraProvider(directory),
                    finetuning_model=str(student if student is not None else target), **settings)
