"""Generated protobuf modules for edgehub.v1 (do not edit; run `make gen-protos`)."""
