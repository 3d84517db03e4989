"""webhook_svc's revisions, oldest first by their down_revision chain."""
