"""Bulk opt-outs (docs/design.md, rule 11): jobs.py does the work, views.py and forms.py are
the managers' pages."""
