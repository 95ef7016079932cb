"""The outside systems a contact's state goes to and comes from, one package each, on a
shared sync core (core.py) and connector base (base.py)."""
