"""The key broker: releases named model keys to attested trust domains, and records every decision.

* :mod:`~tdxfl.keybroker.keystore` -- the broker's key file (sealed at rest under an operator
  passphrase via scrypt, or under key material from an operator-controlled file).
* :mod:`~tdxfl.keybroker.audit` -- append-only, hash-chained (optionally HMAC'd) audit log of key
  releases and of the parameter servers' checkpoint records.
* :mod:`~tdxfl.keybroker.service` -- the ``KeyBroker`` gRPC servicer (mutual RA-TLS): key release,
  checkpoint records.
* :mod:`~tdxfl.keybroker.client` -- ``KeyBrokerClient``: attest the broker, enroll, fetch keys,
  record and look up checkpoints; ``fetch_key``, the one-shot form.

``broker.toml`` is parsed by :mod:`tdxfl.config.broker`; :mod:`tdxfl.wiring.keybroker` runs a broker.
"""
