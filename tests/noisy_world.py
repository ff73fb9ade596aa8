"""A prompt-sensitive simulated world: the target's answers shift with any change of its prompt.

`NoisyTarget` answers a seeded share `accuracy` of the simulated word problems right under its original
prompt. Every other prompt (other instructions, or demonstrations added) reshuffles a seeded fraction `flip`
of its answers (each reshuffled answer is right with probability `accuracy`), so a concept with no real effect
still moves the score up or down by chance, as a 0.5B model does. Optionally one kind of problem is a blind
spot that one helpful rule truly removes, or (`set_size`) that only a set of at least that many worked
exemplars of the kind removes: one exemplar alone changes nothing but the noise. `NoisyTeacher` solves every
problem, proposes a noise rule for every mistake and, on blind-spot mistakes, the helpful rule as well.
"""

from __future__ import annotations

import hashlib
import json

import dspy

from cd_dspy.config import grouped
from cd_dspy.testing.simulated import TEMPLATES, ScriptedEngine, answer_match, kind_of, numbers_of, simulated_splits

NOISE_RULES = [
    "When a question has two numbers, write both down before you start.",
    "When you finish, say the answer in a full sentence in your reasoning.",
    "When a question mentions money, think about the currency.",
    "When the question is long, read it twice.",
    "When you are unsure, start with the first number.",
]
HELPFUL_RULE = "When a price is a percent off, multiply the price by (100 - percent) / 100."
BLIND_KIND = "percent"


def uniform(*parts: object) -> float:
    """A deterministic number in [0, 1) for the given parts."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()
    return int(digest[:13], 16) / 16**13


class NoisyTarget(ScriptedEngine):
    model = "noisy-target"

    def __init__(self, seed: int, *, flip: float = 0.25, accuracy: float = 0.6, blind_spot: bool = False,
                 set_size: int | None = None):
        super().__init__()
        self.seed, self.flip, self.accuracy, self.blind_spot = seed, flip, accuracy, blind_spot
        self.set_size = set_size  # None: the helpful rule removes the blind spot; k: k exemplars of the kind do
        self.original: str | None = None  # the first prompt seen is the program's own

    def respond(self, instructions, inputs, outputs):
        question = inputs.get("question", "")
        kind = kind_of(question)
        truth = TEMPLATES[kind][1](*numbers_of(question))
        prompt = "\n".join([instructions, *self.demo_questions])  # instructions and demonstrations
        with self._lock:
            self.original = self.original if self.original is not None else prompt
        blind = self.blind_spot and kind == BLIND_KIND
        right = not blind and uniform(self.seed, "base", question) < self.accuracy
        if prompt != self.original and uniform(self.seed, "flip", prompt, question) < self.flip:
            right = not blind and uniform(self.seed, "draw", prompt, question) < self.accuracy
        if blind and self.set_size is None and HELPFUL_RULE in instructions:
            right = True
        if blind and self.set_size is not None:
            right = sum(kind_of(q) == BLIND_KIND for q in self.demo_questions) >= self.set_size
        answer = truth if right else truth + 1
        return {"reasoning": "Computed.", "answer": f"{answer:g}"}


class NoisyTeacher(ScriptedEngine):
    model = "noisy-teacher"

    def __init__(self, seed: int, *, helpful: bool = False):
        super().__init__()
        self.seed, self.helpful = seed, helpful

    def respond(self, instructions, inputs, outputs):
        if "question" in inputs and "answer" in outputs:  # solving a mistake: the teacher gets it right
            truth = TEMPLATES[kind_of(inputs["question"])][1](*numbers_of(inputs["question"]))
            return {"reasoning": "Worked out step by step.", "answer": f"{truth:g}"}
        if "candidate_rules" in inputs:  # consolidation: keep the distinct rules
            rules = list(dict.fromkeys(json.loads(inputs["candidate_rules"])))
            return {"rules": rules[: int(inputs.get("max_rules", len(rules)))]}
        attempt = inputs.get("student_attempt", "").replace('\\"', '"')
        steps = json.loads(inputs.get("steps", "[]") or "[]")
        noise = NOISE_RULES[int(uniform(self.seed, "rule", attempt) * len(NOISE_RULES))]
        rules = [HELPFUL_RULE, noise] if self.helpful and kind_of(attempt) == BLIND_KIND else [noise]
        return {"explanation": "The student slipped.", "step": steps[-1] if steps else "", "rules": rules}


def noisy_compile(seed: int, *, helpful: bool, flip: float = 0.25, n_train: int = 24, n_val: int = 80,
                  set_size: int | None = None, teacher_engine: ScriptedEngine | None = None, **settings):
    """Compile ChainOfThought on a fresh noisy world; return (optimizer result, target engine). Concepts are rules
    unless `carrier` says otherwise (the target's blind spot yields only to the helpful rule, or with `set_size` to
    that many exemplars of its kind together); `teacher_engine` replaces the `NoisyTeacher`."""
    from cd_dspy import ConceptDistillation

    target_engine = NoisyTarget(seed, flip=flip, blind_spot=helpful, set_size=set_size)
    target = dspy.LM("simulated/noisy-target", engine=target_engine, cache=False)
    teacher = dspy.LM("simulated/noisy-teacher", engine=teacher_engine or NoisyTeacher(seed, helpful=helpful),
                      cache=False)
    trainset, valset = simulated_splits(n_train, n_val, seed=seed)
    settings = {"num_trials": 10, "max_mistakes": 10, "max_rules": 6, "progress": False, "carrier": "rules",
                **settings}
    optimizer = ConceptDistillation(**grouped(metric=answer_match, teacher_lm=teacher, target_lm=target, seed=seed,
                                    **settings))
    optimizer.compile(dspy.ChainOfThought("question -> answer: float"), trainset=trainset, valset=valset)
    return optimizer.result, target_engine
