"""Score a run's exemplar subset on the math-basic 24/40/80 benchmark's 80 test problems (seed 0), even when CD did
not confirm it: how good was what the confirmation turned down?

    python examples/results/cd_exemplars_repro_math_basic/primary_on_test.py RUN_DIR ID,ID,... OUT.json
"""

import json
import sys
import time
from pathlib import Path

import dspy

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # examples/
from benchmark import Benchmark, parse_args  # noqa: E402

from cd_dspy.core.result import Rule  # noqa: E402
from cd_dspy.core.scoring import score_examples  # noqa: E402
from cd_dspy.phases.integrate import with_rules  # noqa: E402

run, ids, out = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
args = parse_args(["--task", "math-basic", "--target", "qwen2.5-coder-0.5b", "--teacher", "qwen2.5-coder-1.5b",
                   "--train", "24", "--val", "40", "--test", "80", "--trials", "6", "--methods", "baseline",
                   "--out", "/tmp/primary_on_test", "--seed", "0"])
bench = Benchmark(args)
rules = {r["id"]: Rule.from_dict(r) for r in json.loads((run / "rules.json").read_text())}
program = with_rules(bench.task.make_program(), [rules[i] for i in ids], lm=bench.target)
started = time.time()
with dspy.context(lm=bench.target, adapter=bench.adapter(), max_errors=10**6):
    scores = score_examples(program, bench.test, bench.task.metric, 1).scores
Path(out).write_text(json.dumps({"ids": ids, "scores": scores, "seconds": time.time() - started}))
print(f"{100 * sum(scores) / len(scores):.1f} on {len(scores)} test problems")
