"""The round engine: framework-neutral federated learning in numpy.

Typed tensor records (:mod:`.records`), the model interface a framework plugs into
(:mod:`.model`), strategies that own the update contract (:mod:`.strategy`) and how updates
combine (:mod:`.aggregators`, :mod:`.central_dp`), server optimizers,
the step synchronisation under quorum and timeouts (:mod:`.rounds`), the fleet interfaces the
loops run against (:mod:`.fleet`), the parameter server's and the worker's loops
(:mod:`.server`, :mod:`.worker`) and an in-memory fleet for tests and simulation
(:mod:`.memory`). Nothing here knows about the network, attestation or the disk; it imports only
numpy (with ml_dtypes) and :mod:`tdxfl.errors`.
"""
