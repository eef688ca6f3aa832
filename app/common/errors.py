"""Errors that are the user's to fix: the command line prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input: a message that names the thing at fault and how to fix it."""


class ConfigError(UserError):
    """A configuration key has a missing or invalid value."""


class DatasetError(UserError):
    """A dataset cannot be found, opened, or does not fit the policy."""


class ModelError(UserError):
    """A model reference cannot be resolved or is not a SmolVLA policy."""
