"""Test harnesses, imported only by tests and example scripts: deterministic simulated LMs (`simulated`,
`solving_teacher`), fault injection (`faults`) and local worker processes (`local_workers`)."""
