"""Running a mesh: the `paymesh` command, the launcher, nats-server, databases, dead letters, health checks."""
