"""Events from email platforms: Marketing Cloud's Event Notification Service and tracking
data, and other platforms' signed webhooks (docs/design.md, "Events from email platforms")."""
