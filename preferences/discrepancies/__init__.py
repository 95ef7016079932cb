"""Discrepancies between the app and the systems it keeps in step (docs/design.md,
"Reconciliation"): the system team's page, and resolving each one (services.py)."""
