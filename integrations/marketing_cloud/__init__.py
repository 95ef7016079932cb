"""Marketing Cloud: the connector (client.py), the lookup after a re-enrolment (sync.py) and
the pull of tracking events for commercial sends (tracking.py, run by tasks.py)."""
