"""Errors that are the user's to fix (bad config, manifest, weights): printed, no traceback."""
from .config import ConfigError
from .manifest import ManifestError
from .model import WeightsError

USER_ERRORS = (ConfigError, ManifestError, WeightsError)
