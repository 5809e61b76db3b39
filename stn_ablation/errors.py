"""The base of every error whose message already tells the user what to do: the CLI prints it as one line."""


class UsageError(Exception):
    """Bad input or environment (unknown name, malformed file, missing data, unwritable folder): not a bug."""


class ConfigError(UsageError, ValueError):
    """A configuration value or key that is not allowed; the message names it and what is allowed."""


class PluginError(UsageError, ValueError):
    """A plugin module that cannot be imported, or a variant it registers that cannot be used (a name taken twice,
    a classifier that is no nn.Module or gives the wrong output); the message names the module and what to fix."""
