"""Scale-out: the search's and the screen's trials evaluated by `cd-dspy worker` processes through an Optuna
RDB storage (`workers`, `worker`, `verify_workers`), with scores shared in the same database (`shared_store`)."""
