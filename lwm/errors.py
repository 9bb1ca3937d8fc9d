"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class LwmError(Exception):
    """A problem with the user's input (paths, configs, data, shapes) rather than a bug in lwm."""


class ConfigError(LwmError):
    """A config file or override that cannot be loaded or does not make sense."""
