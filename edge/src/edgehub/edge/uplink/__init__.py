"""The edge's side of every link to the hub: ``link`` (the outbox replicated over NATS JetStream, the
twin's heartbeat, the hub's commands consumed), ``twin`` (the device twin, built only there),
``commands`` (each hub command fenced by epoch and applied), ``migration`` (this device as a migration's
source or target), ``api`` (the hub's gRPC device API, mutual TLS), ``knowledge`` (the agents'
``knowledge`` tool asking the hub's L4 graph), ``identity`` (enrollment and the device's credentials).

Its counterpart on the hub is ``edgehub.hub.fleet``."""
