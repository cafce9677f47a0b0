"""The two configuration files, parsed and validated into frozen dataclasses.

* :mod:`~tdxfl.config.federation` -- the federation file: parties, training, faults,
  attestation, policies, output, key broker reference.
* :mod:`~tdxfl.config.broker` -- ``broker.toml``, the model owner's key broker.

Unknown keys are errors in both (a typo must not silently fall back to a default, least of all in
a policy).
"""

from tdxfl.config.broker import BrokerConfig, load_broker_config, parse_broker_config
from tdxfl.config.federation import (
    Attestation,
    Faults,
    Federation,
    KeyBrokerRef,
    Output,
    Party,
    Privacy,
    StrategyConfig,
    StrategyName,
    Training,
    apply_overrides,
    load_federation,
    parse_attestation,
    parse_federation,
)
from tdxfl.errors import ConfigError

__all__ = [
    "Attestation",
    "BrokerConfig",
    "ConfigError",
    "Faults",
    "Federation",
    "KeyBrokerRef",
    "Output",
    "Party",
    "Privacy",
    "StrategyConfig",
    "StrategyName",
    "Training",
    "apply_overrides",
    "load_broker_config",
    "load_federation",
    "parse_attestation",
    "parse_broker_config",
    "parse_federation",
]
