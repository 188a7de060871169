"""The hub's management API (gRPC ``edgehub.v1.HubService`` over TLS): the servicer, who may call what,
and the one mapping of domain errors to gRPC status codes."""
