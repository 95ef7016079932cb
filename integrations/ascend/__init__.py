"""Ascend, the advancement system of record: the nightly change file (sync.py) and its
delivery to a directory or an SFTP server (client.py)."""
