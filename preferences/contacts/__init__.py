"""Finding a contact, the contact page and its changes, and escalations to a manager."""
