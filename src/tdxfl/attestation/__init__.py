"""Remote attestation: evidence producers (attesters), checkers (verifiers), policy and RA-TLS.

Private key material: each party's TLS private key is made here (``ratls.TlsIdentity``) and lives
only in memory; ``tdxfl.transport`` holds it in memory too, as the PEM bytes that grpc and
Python's ``ssl`` are given. Model keys are handled by ``tdxfl.store`` (sealing, and in development
deriving them from a secret) and ``tdxfl.keybroker`` (sealed at rest in its keystore, in memory
while it runs, released over RA-TLS), and are kept in memory by the parties that use them. None of
these keys is ever written in the clear.
"""
