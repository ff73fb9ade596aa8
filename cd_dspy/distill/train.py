"""LoRA training of the student on distillation records: SFT (cross-entropy on the reply's tokens) or white-box
KD (KL to the teacher's top-k distribution at a temperature, mixed with cross-entropy), with peft on a Hugging
Face causal LM. The local GGUF models load through transformers (`gguf_file=`, dequantized to float32), so
the adapter is trained on exactly the weights llama.cpp will serve it on. CPU works.

KD loss per reply token, with the teacher's top-k log-probabilities l_i renormalised at temperature T
(p_i = softmax(l / T) over the k ids) and the student's full-vocabulary log-softmax at T gathered at those ids:
    loss = alpha * T^2 * sum_i p_i (log p_i - log q_i) + (1 - alpha) * CE(student, reply token)
The probability mass outside the teacher's top k is ignored (sparse KD); T^2 keeps the gradient scale of the
KL term independent of T (Hinton et al.).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cd_dspy.distill.data import DistillRecord
from cd_dspy.distill.logprobs import AlignmentError, split_reply

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "cd-dspy[distill]"   (torch, transformers, peft, accelerate, gguf, sentencepiece)'
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def require_training_stack() -> None:
    """Raise ImportError with the install command when torch, transformers or peft is missing."""
    missing = [name for name in ("torch", "transformers", "peft") if _absent(name)]
    if missing:
        raise ImportError(f"training needs {', '.join(missing)}; fix: {INSTALL_HINT}")


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


@dataclass
class LoraSettings:
    """LoRA shape (the paper's: rank 4, alpha 8 on q, k, v, o)."""

    rank: int = 4
    alpha: float = 8.0
    dropout: float = 0.0
    targets: tuple[str, ...] = LORA_TARGETS


@dataclass
class TrainSettings:
    """One training run: mode "sft" or "kd", optimisation and the KD mix (alpha, temperature)."""

    mode: str = "sft"
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3  # sized for the few dozen records a CPU run affords; lower it for thousands
    grad_accum: int = 1
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    seed: int = 0
    max_length: int = 2048
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("sft", "kd"):
            raise ValueError(f"mode must be 'sft' or 'kd', got {self.mode!r}.")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"kd_alpha must lie in [0, 1] (the KL term's weight), got {self.kd_alpha!r}.")
        if not self.kd_temperature > 0:
            raise ValueError(f"kd_temperature must be > 0, got {self.kd_temperature!r}.")
        if self.epochs < 1 or self.grad_accum < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("epochs, grad_accum and max_steps must be >= 1.")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}.")


@dataclass
class Encoded:
    """A record as token ids: the student's prompt then the reply; KD rows aligned with the reply."""

    ids: list[int]
    prompt_len: int
    top_ids: list[list[int]] | None = None
    top_logprobs: list[list[float]] | None = None


@dataclass
class TrainReport:
    """What a training run did and cost."""

    mode: str
    records: int
    dropped: dict[str, int]
    steps: int
    loss_before: float
    loss_after: float
    epoch_losses: list[float]
    seconds: float
    seconds_per_step: float
    peak_rss_mb: float
    settings: dict[str, Any]
    adapter_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_records(records: Sequence[DistillRecord], tokenizer: Any, *, mode: str,
                   max_length: int) -> tuple[list[Encoded], Counter]:
    """Token ids of each record in the student's view; KD keeps only records whose reply tokens equal the
    teacher's (see cd_dspy.distill.logprobs). Returns the encodings and the count of drops by reason."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ValueError("the student's tokenizer has no chat template; train an instruct model's tokenizer.")
    special = {"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token or ""}
    out, dropped = [], Counter()
    for record in records:
        try:
            prompt, reply = split_reply(template, record.messages, **special)
        except AlignmentError:
            dropped["template"] += 1
            continue
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + len(reply_ids) > max_length:
            dropped["too_long"] += 1
            continue
        item = Encoded(prompt_ids + reply_ids, len(prompt_ids))
        if mode == "kd":
            lp = record.teacher_logprobs
            if not lp:
                dropped["no_teacher_logprobs"] += 1
                continue
            if lp["tokens"] != reply_ids:
                dropped["token_mismatch"] += 1
                continue
            item.top_ids, item.top_logprobs = lp["top_ids"], lp["top_logprobs"]
        out.append(item)
    if dropped:
        logger.warning("Distill: %d of %d records not trained on: %s", sum(dropped.values()), len(records),
                       dict(dropped))
    return out, dropped


def record_loss(model: Any, item: Encoded, settings: TrainSettings) -> Any:
    """The training loss of one record (a scalar tensor): CE on the reply, or the KD mix."""
    import torch
    import torch.nn.functional as F

    reply = len(item.ids) - item.prompt_len
    ids = torch.tensor([item.ids])
    logits = model(input_ids=ids, logits_to_keep=reply + 1).logits[0, :-1].float()  # rows predicting the reply
    targets = ids[0, item.prompt_len:]
    ce = F.cross_entropy(logits, targets)
    if settings.mode == "sft" or item.top_ids is None:
        return ce
    t = settings.kd_temperature
    top = torch.tensor(item.top_ids)
    teacher = torch.log_softmax(torch.tensor(item.top_logprobs, dtype=torch.float32) / t, dim=-1)
    student = torch.log_softmax(logits / t, dim=-1).gather(-1, top)
    kl = (teacher.exp() * (teacher - student)).sum(-1).mean()
    return settings.kd_alpha * t * t * kl + (1 - settings.kd_alpha) * ce


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> PeakMemory:
        import psutil

        self._process, self.peak = psutil.Process(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._sample_once()
        self._thread.start()
        return self

    def _sample_once(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._sample_once()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


class LoraTrainer:
    """A student model with one LoRA adapter; `reset()` restores the adapter's initial weights, so several
    settings (an alpha/T grid) train from the same start on the same loaded model."""

    def __init__(self, model: Any, tokenizer: Any, lora: LoraSettings | None = None, seed: int = 0):
        require_training_stack()
        import torch
        from peft import LoraConfig, get_peft_model

        self.lora = lora or LoraSettings()
        torch.manual_seed(seed)
        config = LoraConfig(r=self.lora.rank, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                            target_modules=list(self.lora.targets), task_type="CAUSAL_LM")
        self.model = get_peft_model(model, config)
        self.tokenizer = tokenizer
        self._initial = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        if not self._initial:
            raise ValueError(f"no LoRA parameters: the model has none of the modules {self.lora.targets}.")

    def reset(self) -> None:
        import torch

        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in self._initial:
                    param.copy_(self._initial[name])

    def loss(self, encoded: Sequence[Encoded], settings: TrainSettings) -> float:
        """Mean loss over `encoded` without training (eval mode)."""
        import torch

        if not encoded:
            return float("nan")
        self.model.eval()
        with torch.no_grad():
            return float(sum(record_loss(self.model, item, settings).item() for item in encoded) / len(encoded))

    def train(self, records: Sequence[DistillRecord], settings: TrainSettings,
              adapter_dir: str | os.PathLike | None = None) -> TrainReport:
        """Train the adapter on `records` from its initial weights; save it to `adapter_dir` when given."""
        import torch

        if settings.threads:
            torch.set_num_threads(settings.threads)
        encoded, dropped = encode_records(records, self.tokenizer, mode=settings.mode, max_length=settings.max_length)
        if not encoded:
            raise ValueError(f"no record is trainable ({dict(dropped)}); see the warnings above for the fix.")
        self.reset()
        torch.manual_seed(settings.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
        before = self.loss(encoded, settings)
        rng, steps, epoch_losses = random.Random(settings.seed), 0, []
        started = time.perf_counter()
        with PeakMemory() as memory:
            for _ in range(settings.epochs):
                order = list(range(len(encoded)))
                rng.shuffle(order)
                self.model.train()
                total = 0.0
                for number, index in enumerate(order, 1):
                    loss = record_loss(self.model, encoded[index], settings)
                    (loss / settings.grad_accum).backward()
                    total += loss.item()
                    if number % settings.grad_accum == 0 or number == len(order):
                        optimizer.step()
                        optimizer.zero_grad()
                        steps += 1
                        if settings.max_steps and steps >= settings.max_steps:
                            break
                epoch_losses.append(total / number)
                if settings.max_steps and steps >= settings.max_steps:
                    break
        seconds = time.perf_counter() - started
        after = self.loss(encoded, settings)
        report = TrainReport(settings.mode, len(encoded), dict(dropped), steps, before, after, epoch_losses,
                             round(seconds, 2), round(seconds / max(steps, 1), 3), memory.peak_mb, asdict(settings))
        if adapter_dir is not None:
            report.adapter_dir = str(self.save(adapter_dir))
        logger.info("Distill: trained %s: %d steps in %.1f s, loss %.4f -> %.4f, peak %.0f MB", settings.mode, steps,
                    seconds, before, after, memory.peak_mb)
        return report

    def save(self, adapter_dir: str | os.PathLike) -> Path:
        """Save the adapter (peft format) and, in `adapter_dir/base`, the base model's config and tokenizer
        (what llama.cpp's convert_lora_to_gguf.py needs as --base)."""
        out = Path(adapter_dir)
        self.model.save_pretrained(str(out), save_embedding_layers=False)  # LoRA on attention only
        save_base_config(self.model.get_base_model(), self.tokenizer, out / "base")
        return out


def save_base_config(model: Any, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """Write the model's config (with its architecture named) and tokenizer, without the weights."""
    import copy

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    if not getattr(config, "architectures", None):
        config.architectures = [type(model).__name__]
    if hasattr(config, "quantization_config"):  # {"quant_method": "gguf"} from a GGUF load: the weights are float
        del config.quantization_config
    config.save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory
