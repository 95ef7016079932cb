"""Salesforce: the connector (client.py), the push and the inbound pull (sync.py)."""
