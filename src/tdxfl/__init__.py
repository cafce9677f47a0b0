"""tdxfl: federated learning between Intel TDX trust domains over mutually attested RA-TLS gRPC."""

__version__ = "0.1.0"
