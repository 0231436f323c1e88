"""Errors that are the user's to fix (bad config, manifest, weights, a busy output): printed, no traceback."""
from .config import ConfigError
from .manifest import ManifestError
from .model import WeightsError
from .runs import RunInProgressError

USER_ERRORS = (ConfigError, ManifestError, WeightsError, RunInProgressError)
