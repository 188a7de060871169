"""The edge's side of every link to the hub: ``link`` (the outbox replicated over NATS JetStream, the
hub's commands applied, the twin's heartbeat), ``api`` (the hub's gRPC device API, mutual TLS),
``knowledge`` (the agents' ``knowledge`` tool asking the hub's L4 graph), ``migration`` (this device
as a migration's source or target), ``identity`` (enrollment and the device's credentials).

Its counterpart on the hub is ``edgehub.hub.fleet``."""
