"""`cd_dspy.migrate`: whether a program can move to a cheaper model. The API (`api`), its record (`record`), the
levers compared (`levers`, `lever_table`), costs and plots, the Markdown/HTML report, and `transfer` (a rulebook
re-checked on another target)."""
