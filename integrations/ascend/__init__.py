"""Ascend, the advancement system of record: the nightly change file (export.py)."""
