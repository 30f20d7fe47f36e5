"""Errors raised on bad input. Each message names the file, column or key at fault."""


class ChimeError(Exception):
    """Base class of every error this package raises on purpose."""


class DataError(ChimeError, ValueError):
    """A data file is missing, malformed or violates the data protocol."""


class ConfigError(ChimeError, ValueError):
    """A configuration key is unknown, missing or inconsistent."""


class LeakageError(DataError):
    """Compressor input would contain behaviors at or after t1 (spec section 2)."""
