"""Marketing Cloud: the connector (client.py) and the lookup after a re-enrolment (sync.py)."""
