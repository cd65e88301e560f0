"""Configuration: ``load(path)`` returns validated ``Settings`` or raises ``ConfigError``."""

from .loader import ConfigError, config_path, load, masked, validate
from .models import Settings, parse_hours

__all__ = ["ConfigError", "Settings", "config_path", "load", "masked", "parse_hours", "validate"]
