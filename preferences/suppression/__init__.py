"""The global email suppression list (docs/design.md, rule 10), and the sender opt-outs
beside it (rule 9): managers and the system team see and export them."""
