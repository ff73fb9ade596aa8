"""The `cd-dspy` command (`main`): compile, evaluate, models, worker, report, and the `migrate`, `rulebook` and
`distill` subcommands (one module each). Nothing outside this package imports it."""
