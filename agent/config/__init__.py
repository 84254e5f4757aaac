"""The agent's configuration: one schema (agent.config.schema) and its sources (file, environment,
flags in agent.config.load; MDM in agent.config.mdm). Every key with its default and meaning is in
default_config.toml beside this module."""

from agent.config.load import load_config, parse_assignment
from agent.config.schema import DEFAULT_CONFIG_FILE, AgentConfig, ConfigError, TargetSpec, default_state_dir

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "AgentConfig",
    "ConfigError",
    "TargetSpec",
    "default_state_dir",
    "load_config",
    "parse_assignment",
]
