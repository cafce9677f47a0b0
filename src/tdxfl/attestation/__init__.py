"""Remote attestation: evidence producers (attesters), checkers (verifiers), policy and RA-TLS.

This package and ``tdxfl.store`` are the only code that handles private keys.
"""
