"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""
from __future__ import annotations

from collections.abc import Iterator


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then each exception it was raised from or while handling, each once: what a library that wraps an
    error in its own exception keeps of the original."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        yield exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__


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


class DiskFullError(FFXError):
    """A write failed for want of space (disk full, quota, file size limit); the message names the path and the
    free space (components.files.disk_full_error)."""


class Terminated(BaseException):
    """SIGTERM (a scheduler, `docker stop`): raised in the main thread like Ctrl-C's KeyboardInterrupt, so that the
    same clean-up runs (writes dropped or finished, MLflow runs closed KILLED). A BaseException for the same reason
    KeyboardInterrupt is one: `except Exception` blocks must not swallow it."""
