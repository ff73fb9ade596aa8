"""Reliability figures: a compile on the simulated world with both LMs failing at a seeded rate.

    python examples/reliability_figures.py            # writes examples/results/reliability.json

Faults (timeouts, rate limits, empty and malformed replies, engine crashes) are injected by
`cd_dspy.testing.faults.FaultyEngine`; DSPy retries timeouts and rate limits (num_retries=3, backoff hint
1 ms * 2**attempt here), unparseable target replies score as failures, failed teacher calls are
retried (teacher_retries=2) and then skipped.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from cd_dspy.testing.faults import simulated_faulty_compile

RATES = (0.1, 0.2, 0.3)


def main() -> None:
    logging.disable(logging.WARNING)
    rows = []
    for rate in RATES:
        with tempfile.TemporaryDirectory() as tmp:
            figures = simulated_faulty_compile(Path(tmp) / "run", rate=rate, seed=0, backoff=0.001, num_trials=8)
        rows.append({k: v for k, v in figures.items() if not k.startswith("_")})
        print(f"rate {rate}: target {figures['target']}, teacher {figures['teacher']}, "
              f"score {figures['baseline_score']:.1f} -> {figures['best_score']:.1f}")
    out = Path(__file__).parent / "results" / "reliability.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
