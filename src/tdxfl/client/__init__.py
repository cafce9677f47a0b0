"""The worker: attested connection to the parameter server and local training."""
