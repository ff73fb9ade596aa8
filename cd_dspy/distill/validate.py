"""Line-by-line validation of distillation JSONL and its sidecar, with errors that name the line and the fix."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cd_dspy.distill.data import ROLES, meta_path

MAX_LISTED = 20


class DistillDataError(ValueError):
    """Malformed distillation data; the message lists every bad line (up to MAX_LISTED)."""


@dataclass(frozen=True)
class ValidationReport:
    path: str
    records: int
    with_logprobs: int


def check_messages(record: Any) -> str | None:
    """Why a chat record is malformed (None when it is fine): DSPy's chat format, ending with one reply."""
    if not isinstance(record, dict):
        return f"a line must be a JSON object, got {type(record).__name__}"
    if set(record) != {"messages"}:
        return f"a record has exactly one key, 'messages' (DSPy's chat format); found {sorted(record)}"
    messages = record["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        return "'messages' must be a list of at least a user and an assistant message"
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return f"message {number} must be an object with exactly 'role' and 'content'"
        if message["role"] not in ROLES:
            return f"message {number} has role {message['role']!r}; use one of {list(ROLES)}"
        if not isinstance(message["content"], str) or not message["content"].strip():
            return f"message {number} ({message['role']}) has empty or non-string content"
    roles = [m["role"] for m in messages]
    if roles[-1] != "assistant":
        return "the last message must be the assistant's reply (the training target)"
    if "system" in roles[1:]:
        return "a system message may only come first"
    if "user" not in roles:
        return "there is no user message"
    return None


def check_logprobs(logprobs: Any) -> str | None:
    """Why a teacher_logprobs entry is malformed: token ids and, per token, k top ids with k log-probabilities."""
    if not isinstance(logprobs, dict):
        return "teacher_logprobs must be an object"
    missing = {"tokens", "top_ids", "top_logprobs"} - set(logprobs)
    if missing:
        return f"teacher_logprobs lacks {sorted(missing)}"
    tokens, ids, values = logprobs["tokens"], logprobs["top_ids"], logprobs["top_logprobs"]
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, int) and t >= 0 for t in tokens):
        return "teacher_logprobs.tokens must be a non-empty list of token ids (ints >= 0)"
    if not isinstance(ids, list) or not isinstance(values, list) or not len(ids) == len(values) == len(tokens):
        return (f"teacher_logprobs are not aligned: {len(tokens)} tokens, "
                f"{len(ids) if isinstance(ids, list) else '?'} top_ids rows, "
                f"{len(values) if isinstance(values, list) else '?'} top_logprobs rows (one row per token)")
    k = len(ids[0]) if isinstance(ids[0], list) else 0
    for position, (row_ids, row_values) in enumerate(zip(ids, values, strict=True)):
        if not isinstance(row_ids, list) or not isinstance(row_values, list) or not k or \
                len(row_ids) != k or len(row_values) != k:
            return f"teacher_logprobs row {position}: top_ids and top_logprobs must both hold k = {k or '>0'} entries"
        if not all(isinstance(i, int) and i >= 0 for i in row_ids) or len(set(row_ids)) != k:
            return f"teacher_logprobs row {position}: top_ids must be k distinct token ids"
        if not all(isinstance(v, int | float) and math.isfinite(v) and v <= 1e-4 for v in row_values):
            return f"teacher_logprobs row {position}: log-probabilities must be finite and <= 0"
    return None


def _lines(path: Path) -> list[tuple[int, str]]:
    return [(number, line) for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if line.strip()]


def _parse(path: Path, number: int, line: str, errors: list[str]) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        errors.append(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})")
        return None


def validate_jsonl(path: str | Path, *, require_logprobs: bool = False) -> ValidationReport:
    """Check every line of a distillation JSONL (and its `.meta.jsonl` sidecar when present or required).

    Raises `DistillDataError` listing each bad line as `file:line: problem`."""
    path = Path(path)
    if not path.is_file():
        raise DistillDataError(f"{path}: no such file; write it with `cd_dspy.distill.write_jsonl` or "
                               "`cd-dspy distill`.")
    errors: list[str] = []
    chats = _lines(path)
    if not chats:
        errors.append(f"{path}: the file holds no records")
    for number, line in chats:
        record = _parse(path, number, line, errors)
        if record is not None and (problem := check_messages(record)):
            errors.append(f"{path}:{number}: {problem}")
    side, with_logprobs = meta_path(path), 0
    if side.is_file():
        metas = _lines(side)
        if len(metas) != len(chats):
            errors.append(f"{side}: {len(metas)} lines for {len(chats)} records; regenerate both files together")
        for position, (number, line) in enumerate(metas):
            meta = _parse(side, number, line, errors)
            if meta is None:
                continue
            if not isinstance(meta, dict) or meta.get("line") != position:
                errors.append(f"{side}:{number}: 'line' must be {position} (the record's 0-based line)")
                continue
            if "teacher_logprobs" in meta:
                with_logprobs += 1
                if problem := check_logprobs(meta["teacher_logprobs"]):
                    errors.append(f"{side}:{number}: {problem}")
            elif require_logprobs:
                errors.append(f"{side}:{number}: no teacher_logprobs; KD needs them: run "
                              "`cd_dspy.distill.add_teacher_logprobs` (or `cd-dspy distill --mode kd`)")
    elif require_logprobs:
        errors.append(f"{side}: missing; KD needs the teacher's log-probabilities in this sidecar")
    if errors:
        shown = errors[:MAX_LISTED]
        more = f"\n... and {len(errors) - MAX_LISTED} more" if len(errors) > MAX_LISTED else ""
        raise DistillDataError(f"{len(errors)} problem(s) in the distillation data:\n" + "\n".join(shown) + more)
    return ValidationReport(str(path), len(chats), with_logprobs)
