"""Edge<->hub replication over NATS JetStream (outbox publisher, command consumer): issue 4."""
