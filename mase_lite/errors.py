"""Error types. Every user-facing failure is a :class:`MaseError`; the CLI prints its message in one line."""


class MaseError(Exception):
    """Base class of mase-lite's user-facing errors."""


class ConfigError(MaseError, ValueError):
    """A configuration value or key is invalid; the message names the field and the valid options."""


class TraceError(MaseError):
    """A model could not be traced into a MaseGraph."""


class DataError(MaseError):
    """Data or tokenizer could not be found or does not have the expected shape."""


class PassError(MaseError):
    """A pass could not be applied; the graph it was given is left unchanged."""
