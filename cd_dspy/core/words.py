"""Word sets and their Jaccard similarity: how alike two rules, or two questions, are (no LM call)."""

from __future__ import annotations

import re
from collections.abc import Set

RULE_WORDS = r"[a-z0-9]+"  # a rule's words, numbers included
QUESTION_WORDS = r"[a-z_]{2,}"  # a question's words without numbers: two questions from one template look alike


def words(text: str, pattern: str = RULE_WORDS) -> frozenset[str]:
    """The lower-cased words of `text` that match `pattern`."""
    return frozenset(re.findall(pattern, text.lower()))


def jaccard(a: Set[str], b: Set[str], empty: float = 0.0) -> float:
    """|a ∩ b| / |a ∪ b| (`empty` when both are empty)."""
    union = a | b
    return len(a & b) / len(union) if union else empty
