"""Wiring: the one place per role (parameter server, worker, key broker, demo) that reads the
federation or broker file, fetches keys, chooses the trust backends and builds the servers.

The CLI, the demo, the benchmarks and the tests build parties only through this package. It is
also where insecure backends are chosen: the simulated TD verifier is installed only for a
policy that accepts simulated evidence.
"""
