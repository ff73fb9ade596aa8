"""The optimizer's phases, in order: collect the target's mistakes, solve and induce concepts (`solve`, `induce`,
`induce_concepts`, `concepts`), screen them (`verify`), search subsets (`search`), confirm on fresh data
(`confirm`), and put the winners into the program (`integrate`); `rulebook` carries rules into and out of a compile.
Each phase owns its run-directory files."""
