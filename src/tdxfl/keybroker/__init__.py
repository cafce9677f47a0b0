"""The key broker: releases named model keys to attested trust domains, and records every decision.

* :mod:`~tdxfl.keybroker.keystore` -- the broker's key file (sealed at rest under an operator
  passphrase via scrypt, or under key material from an operator-controlled file).
* :mod:`~tdxfl.keybroker.audit` -- append-only, hash-chained (optionally HMAC'd) audit log.
* :mod:`~tdxfl.keybroker.service` -- the ``KeyBroker`` gRPC servicer (mutual RA-TLS).
* :mod:`~tdxfl.keybroker.client` -- ``fetch_key``: attest the broker, enroll, fetch a key.

``broker.toml`` is parsed by :mod:`tdxfl.config.broker`; :mod:`tdxfl.wiring.keybroker` runs a broker.
"""
