"""The parameter server: attested gRPC service, round orchestration, evaluation."""
