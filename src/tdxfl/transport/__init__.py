"""gRPC transport: protobuf messages, chunked tensor streaming and attested channels."""
