"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class FFXError(Exception):
    """Base of every user-facing error; the message names the file or key at fault."""


class ConfigError(FFXError):
    """A params file has an unknown key, a wrong type or a value out of range."""


class DatasetError(FFXError):
    """The dataset layout is wrong (missing split, empty class, mismatched classes)."""


class BadImagesError(FFXError):
    """One or more image files cannot be used; the message lists each with its reason."""


class WeightsError(FFXError):
    """Backbone weights cannot be loaded."""


class ModelNotFoundError(FFXError):
    """A model reference (path or registry URI) does not resolve."""


class UnsafeModelError(FFXError):
    """A model file would need unsafe deserialisation (Python code inside it) to load."""


class LockedError(FFXError):
    """Another process is writing the same output."""
