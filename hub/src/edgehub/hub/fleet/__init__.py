"""The fleet as the hub keeps it: agents and devices (their twins) in JetStream KV, the migration of
agents between devices, and NATS leaf nodes on site gateways.

Its counterpart on the edge is ``edgehub.edge.uplink``."""
