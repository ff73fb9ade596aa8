"""Running untrusted generated code (HumanEval's metric): `run.run_untrusted` and its OS isolation (`isolation`)."""
