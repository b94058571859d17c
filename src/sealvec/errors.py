"""Typed exceptions. Every error sealvec raises on purpose derives from SealvecError."""

from __future__ import annotations


class SealvecError(Exception):
    """Base class of every error sealvec raises on purpose."""


class ValidationError(SealvecError, ValueError):
    """A caller's argument is wrong: the message names the argument and the fix."""


class IntegrityError(SealvecError):
    """Stored data failed authentication: tampered, truncated, swapped or rolled back.

    Raised for every such failure alike; sealvec never falls back to unauthenticated
    data.
    """


class KeyNotFoundError(SealvecError):
    """A key-encryption key (named by its versioned id) is not available."""


class KeyAccessError(SealvecError):
    """A key provider refused or failed an operation (wrong passphrase, denied, ...)."""


class MemoryLockError(SealvecError):
    """Locked memory could not be obtained (RLIMIT_MEMLOCK or missing CAP_IPC_LOCK)."""


class StoreLockedError(SealvecError):
    """Another writer holds the store's writer lock."""


class ConflictError(SealvecError):
    """Another writer committed the same manifest generation first."""


class StorageError(SealvecError):
    """The storage backend failed (disk full, permission denied, missing object)."""


class CollectionNotFoundError(SealvecError):
    """No collection exists at the given location."""


class CollectionExistsError(SealvecError):
    """A collection already exists at the given location."""


class ClosedError(SealvecError):
    """The collection was closed."""


class EmbedderError(SealvecError):
    """The embedder failed or returned vectors that do not fit the collection."""
