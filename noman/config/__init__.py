"""Noman's configuration: a TOML file plus environment, validated once at start.

``loading``  everything, while the package is being split: the declaration of each
             TOML table, the settings the rest of Noman reads, and the loader.

The names below are the package's API; import them from ``noman.config``. ``ConfigError``
(from ``noman.errors``) is what the loader raises.
"""

from noman.config.loading import (
    ENVIRONMENT,
    MIN_SECRET_CHARS,
    SCHEMA,
    TABLES,
    ConsulSettings,
    HookProofs,
    Key,
    NomadSettings,
    NotifySettings,
    NotifyTarget,
    PollSettings,
    RolloutSettings,
    Settings,
    UISettings,
    config_path,
    hash_secret,
    load,
    load_settings,
    parse_settings,
)
from noman.errors import ConfigError

__all__ = [
    "ENVIRONMENT",
    "MIN_SECRET_CHARS",
    "SCHEMA",
    "TABLES",
    "ConfigError",
    "ConsulSettings",
    "HookProofs",
    "Key",
    "NomadSettings",
    "NotifySettings",
    "NotifyTarget",
    "PollSettings",
    "RolloutSettings",
    "Settings",
    "UISettings",
    "config_path",
    "hash_secret",
    "load",
    "load_settings",
    "parse_settings",
]
