"""The teacher's top-k log-probabilities on the exact tokens of its reply, through llama.cpp (white-box KD).

Alignment. Teacher and student must share one tokenizer (Qwen2.5-Coder 0.5B and 1.5B do). A record's reply
is cut from the conversation the same way on both sides: `split_reply` renders the model's own chat template
once without the reply (with the generation prompt) and once with it, and the reply's text is the difference
(for Qwen: the reply, then `<|im_end|>`). The prompt and the reply are tokenized *separately*, as at serving
time, when llama.cpp tokenizes the prompt and the model then generates the reply's tokens. The teacher
scores its reply after its own (primed) prompt; the student is trained on the same reply tokens after the
student's prompt. The sidecar stores the reply's token ids, and the trainer re-tokenizes the reply with the
student's tokenizer and drops (and counts) any record whose ids differ, so a KD loss never compares
distributions at mismatched positions. Logits at position i predict token i + 1: the row for reply token j
is the prompt length + j - 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cd_dspy.distill.data import DistillRecord

logger = logging.getLogger(__name__)


class AlignmentError(ValueError):
    """A reply cannot be cut from its conversation, or its tokens differ between teacher and student."""


def render_chat(template: str, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool,
                bos_token: str = "", eos_token: str = "") -> str:
    """Render `messages` with a Jinja chat template the way transformers and llama-cpp-python both do."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                            bos_token=bos_token, eos_token=eos_token,
                                            raise_exception=raise_exception)


def split_reply(template: str, messages: Sequence[dict[str, str]], **special: str) -> tuple[str, str]:
    """(prompt, reply) texts of a conversation whose last message is the assistant's reply."""
    if not messages or messages[-1].get("role") != "assistant":
        raise AlignmentError("the conversation must end with the assistant's reply")
    prompt = render_chat(template, messages[:-1], add_generation_prompt=True, **special)
    full = render_chat(template, messages, add_generation_prompt=False, **special)
    if not full.startswith(prompt):
        raise AlignmentError("the chat template renders the conversation without its reply as something that is "
                             "not a prefix of the whole conversation; use a model whose template appends the reply")
    return prompt, full[len(prompt):].rstrip()


@dataclass
class TokenLogprobs:
    """The teacher's view of one reply: its token ids and, per token, the top-k ids and log-probabilities."""

    tokens: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]
    token_logprobs: list[float]  # the log-probability of the reply's own token (diagnostics: teacher NLL)
    prompt_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_k_logprobs(logits: np.ndarray, tokens: Sequence[int], k: int) -> tuple[list[list[int]], list[list[float]],
                                                                                 list[float]]:
    """Per row of `logits` (one per reply token): the k most likely ids, their log-probabilities (descending)
    and the log-probability of the token that follows."""
    rows = np.asarray(logits, dtype=np.float32)
    peak = rows.max(axis=-1, keepdims=True)
    norm = peak + np.log(np.exp(rows - peak).sum(axis=-1, keepdims=True, dtype=np.float64)).astype(np.float32)
    top = np.argpartition(rows, rows.shape[-1] - k, axis=-1)[:, -k:]
    values = np.take_along_axis(rows, top, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    top, values = np.take_along_axis(top, order, axis=-1), np.take_along_axis(values, order, axis=-1) - norm
    own = rows[np.arange(len(tokens)), np.asarray(tokens)] - norm[:, 0]
    return top.tolist(), np.round(values.astype(np.float64), 5).tolist(), np.round(own.astype(np.float64), 5).tolist()


class LlamaScorer:
    """A llama.cpp model kept with every position's logits (`logits_all`), to score given replies.

    Its memory holds n_ctx x vocabulary float32 logits (2048 x 151936: 1.2 GB): keep `n_ctx` just above the
    longest record. `lora_path` scores with a llama.cpp LoRA adapter applied (e.g. a tuned student)."""

    def __init__(self, model_path: str | os.PathLike, *, top_k: int = 20, n_ctx: int = 2048,
                 n_threads: int | None = None, lora_path: str | os.PathLike | None = None):
        from cd_dspy.lms.llama_engine import _llama_factory

        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int (e.g. 20), got {top_k!r}.")
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"teacher GGUF not found: {path}; KD needs a local GGUF teacher (a catalog "
                                    "name resolves to its file through cd_dspy.lms.ensure_model).")
        self.top_k, self.n_ctx, self.path = top_k, n_ctx, str(path)
        adapter = {"lora_path": str(Path(lora_path).expanduser())} if lora_path else {}
        self.llama = _llama_factory()(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                                      n_threads=n_threads or os.cpu_count() or 1, **adapter)
        self.template = (getattr(self.llama, "metadata", None) or {}).get("tokenizer.chat_template")
        if not self.template:
            raise ValueError(f"{path} has no chat template (tokenizer.chat_template); KD needs an instruct model.")

    def _special(self, token: int) -> str:
        try:
            return self.llama.detokenize([token], special=True).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a model without that token: the template does not use it
            return ""

    def encode(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
        """(prompt ids, reply ids) of a conversation ending with the assistant's reply."""
        special = {"bos_token": self._special(self.llama.token_bos()),
                   "eos_token": self._special(self.llama.token_eos())}
        prompt, reply = split_reply(self.template, messages, **special)
        prompt_ids = self.llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        reply_ids = self.llama.tokenize(reply.encode("utf-8"), add_bos=False, special=True)
        if not reply_ids:
            raise AlignmentError("the reply is empty after tokenization")
        return list(prompt_ids), list(reply_ids)

    def score(self, prompt_messages: Sequence[dict[str, str]], reply: str) -> TokenLogprobs:
        """The teacher's top-k log-probabilities for `reply` after `prompt_messages` (system, user)."""
        prompt_ids, reply_ids = self.encode([*prompt_messages, {"role": "assistant", "content": reply}])
        total = len(prompt_ids) + len(reply_ids)
        if total > self.n_ctx:
            raise AlignmentError(f"the record has {total} tokens, more than n_ctx = {self.n_ctx}; raise n_ctx "
                                 "(--kd-n-ctx) or shorten the prompts")
        self.llama.reset()
        self.llama.eval(prompt_ids + reply_ids)
        logits = np.asarray(self.llama.scores[len(prompt_ids) - 1: total - 1])
        ids, values, own = top_k_logprobs(logits, reply_ids, self.top_k)
        return TokenLogprobs(reply_ids, ids, values, own, len(prompt_ids))

    def close(self) -> None:
        close = getattr(self.llama, "close", None)
        if callable(close):
            close()


def add_teacher_logprobs(records: Sequence[DistillRecord], scorer: LlamaScorer) -> dict[str, int]:
    """Attach the teacher's top-k log-probabilities to each record (in place); a record that cannot be scored
    (too long, not alignable) is dropped from KD by leaving it without them. Returns counts."""
    scored = skipped = 0
    for record in records:
        try:
            record.teacher_logprobs = scorer.score(record.teacher_messages, record.messages[-1]["content"]).to_dict()
            scored += 1
        except AlignmentError as exc:
            logger.warning("Distill: record of example %d (%s) not scored for KD: %s", record.example_index,
                           record.predictor, exc)
            skipped += 1
    if not scored:
        raise AlignmentError(f"none of the {len(records)} records could be scored by the teacher for KD")
    return {"scored": scored, "skipped": skipped}
