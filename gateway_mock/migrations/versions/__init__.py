"""gateway_mock's revisions, oldest first by their down_revision chain."""
