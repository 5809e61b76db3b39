"""The base of every error whose message already tells the user what to do: the CLI prints it as one line."""


class UsageError(Exception):
    """Bad input or environment (unknown name, malformed file, missing data, unwritable folder): not a bug."""


class ConfigError(UsageError, ValueError):
    """A configuration value or key that is not allowed; the message names it and what is allowed."""
