"""What every phase stands on: the run directory, keys, scoring and evaluation, usage and budgets, failures,
statistics, progress, input checks, the records passed between phases, and resolving names (`loading`)."""
