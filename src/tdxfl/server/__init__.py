"""The parameter server: attested gRPC service and tensor-link handler, round orchestration, evaluation."""
