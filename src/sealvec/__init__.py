"""sealvec: an encrypted vector store whose vectors are decrypted only into locked memory.

    import sealvec
    with sealvec.Collection.create("./store", dimension=384) as collection:
        collection.add(ids, vectors, documents=texts)
        hits = collection.search(query_vector, k=5, include=["documents"])[0]
"""

from sealvec.collection import Collection, Hit, Record, SearchResults, collection_exists
from sealvec.errors import (
    ClosedError,
    CollectionExistsError,
    CollectionNotFoundError,
    ConflictError,
    EmbedderError,
    IntegrityError,
    KeyAccessError,
    KeyNotFoundError,
    MemoryLockError,
    SealvecError,
    StorageError,
    StoreLockedError,
    ValidationError,
)
from sealvec.keys import KeyProvider, LocalKeyring
from sealvec.storage import LocalDirectory, Storage
from sealvec.verify import verify_store

__version__ = "0.1.0"

__all__ = [
    "ClosedError",
    "Collection",
    "CollectionExistsError",
    "CollectionNotFoundError",
    "ConflictError",
    "EmbedderError",
    "Hit",
    "IntegrityError",
    "KeyAccessError",
    "KeyNotFoundError",
    "KeyProvider",
    "LocalDirectory",
    "LocalKeyring",
    "MemoryLockError",
    "Record",
    "SealvecError",
    "SearchResults",
    "Storage",
    "StorageError",
    "StoreLockedError",
    "ValidationError",
    "collection_exists",
    "verify_store",
]
