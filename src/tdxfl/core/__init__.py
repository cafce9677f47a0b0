"""Framework-neutral federated-learning core: typed records, optimizers, aggregation strategies."""
