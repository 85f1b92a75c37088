"""Noman's configuration: a TOML file plus environment, validated once at start.

``tables``   the declaration: each TOML table as a frozen ``msgspec.Struct``, one field
             per key with its type, default, constraint and help (``TABLES``,
             ``SCHEMA``), and the environment variables the README documents
             (``ENVIRONMENT``). ``ConsulSettings``, ``NomadSettings`` and
             ``RolloutSettings`` are their tables, used as they are.
``settings`` what the rest of Noman reads: ``Settings`` and the shapes it holds
             (``NotifySettings``, ``PollSettings``, ``UISettings``, ``HookProofs``,
             ``NotifyTarget``).
``loading``  reading a file and the environment into ``Settings`` (``load``,
             ``load_settings``, ``parse_settings``, ``config_path``), with messages
             naming file, line, table and key; ``hash_secret``, the digest secrets
             are kept and compared as.

The names below are the package's API; import them from ``noman.config``. ``ConfigError``
(from ``noman.errors``) is what the loader raises.
"""

from noman.config.loading import (
    MIN_SECRET_CHARS,
    config_path,
    hash_secret,
    load,
    load_settings,
    parse_settings,
)
from noman.config.settings import (
    HookProofs,
    NotifySettings,
    NotifyTarget,
    PollSettings,
    Settings,
    UISettings,
)
from noman.config.tables import (
    ENVIRONMENT,
    SCHEMA,
    TABLES,
    ConsulSettings,
    Key,
    NomadSettings,
    RolloutSettings,
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
