"""Attested transport: gRPC enrollment and control channels, the tensor link, tensor headers."""
