"""Key providers and the envelope key hierarchy.

    key-encryption key (KEK)   held by a KeyProvider (local keyring, Key Vault);
        | wraps                   named by a versioned key id, never leaves it
    collection key (CK)        random 256-bit, one per collection
        | wraps (RFC 5649)
    data key (DEK)             random 256-bit, one per shard

Opening a collection costs one ``unwrap_key`` call at the provider. Unwrapped keys
are copied into locked memory (``SecureBuffer``) and the libraries' transient copies
are dropped at once; ``cryptography`` itself needs ``bytes`` keys for a moment.
"""

from __future__ import annotations

import abc
import base64
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)

from sealvec import _core
from sealvec.errors import (
    IntegrityError,
    KeyAccessError,
    KeyNotFoundError,
    ValidationError,
)

logger = logging.getLogger(__name__)

KEY_SIZE = 32
LOCAL_SCHEME = "local:"
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyProvider(abc.ABC):
    """Wraps and unwraps collection keys under a key-encryption key it holds."""

    @abc.abstractmethod
    def wrap_key(self, key_id: str, key: bytes | memoryview) -> tuple[str, bytes]:
        """Wrap ``key`` under ``key_id``; return (versioned key id, wrapped bytes).

        An unversioned id means the key's current version.
        """

    @abc.abstractmethod
    def unwrap_key(self, versioned_key_id: str, wrapped: bytes) -> bytes:
        """Unwrap a key wrapped by ``wrap_key`` under exactly that key version."""

    def handles(self, key_id: str) -> bool:
        """Whether this provider serves ``key_id``."""
        return True

    def unversioned(self, key_id: str) -> str:
        """The key id without its version, naming the key's current version."""
        return key_id


class SecretKey:
    """A 256-bit key held in locked memory; ``close()`` zeroes it."""

    def __init__(self, material: bytes | memoryview, memory_lock: str = "required") -> None:
        if len(material) != KEY_SIZE:
            raise ValueError(f"keys are {KEY_SIZE} bytes, got {len(material)}")
        self._buffer = _core.SecureBuffer(KEY_SIZE, memory_lock)
        memoryview(self._buffer)[:] = material
        self._buffer.seal()

    @classmethod
    def generate(cls, memory_lock: str = "required") -> SecretKey:
        return cls(os.urandom(KEY_SIZE), memory_lock)

    def material(self) -> memoryview:
        """A read-only view of the key bytes (valid until ``close``)."""
        return memoryview(self._buffer)

    def close(self) -> None:
        self._buffer.release()


def wrap_data_key(collection_key: SecretKey, data_key: SecretKey) -> bytes:
    """Wrap a shard's DEK under the collection key (AES key wrap with padding)."""
    return aes_key_wrap_with_padding(
        bytes(collection_key.material()), bytes(data_key.material())
    )


def unwrap_data_key(
    collection_key: SecretKey, wrapped: bytes, memory_lock: str = "required"
) -> SecretKey:
    """Unwrap a shard's DEK; a wrong collection key or tampered bytes fail closed."""
    try:
        material = aes_key_unwrap_with_padding(bytes(collection_key.material()), wrapped)
    except InvalidUnwrap:
        raise IntegrityError("a shard's wrapped data key failed to unwrap") from None
    if len(material) != KEY_SIZE:
        raise IntegrityError("a shard's data key has the wrong length")
    return SecretKey(material, memory_lock)


# ------------------------------------------------------------------ local keyring


def parse_local_key_id(key_id: str) -> tuple[str, int | None]:
    """``local:NAME`` or ``local:NAME/VERSION`` -> (name, version or None)."""
    if not key_id.startswith(LOCAL_SCHEME):
        raise ValidationError(f"key id must start with 'local:', got {key_id!r}")
    rest = key_id[len(LOCAL_SCHEME) :]
    name, _, version = rest.partition("/")
    if not _KEY_NAME.match(name):
        raise ValidationError(
            f"key name must be 1-64 letters, digits, '.', '_' or '-', got {name!r}"
        )
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValidationError(f"key version must be a positive integer, got {version!r}")
    return name, int(version)


def default_keyring_path() -> Path:
    """``$SEALVEC_KEYRING``, else ``$XDG_CONFIG_HOME/sealvec/keyring.json``."""
    explicit = os.environ.get("SEALVEC_KEYRING")
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "sealvec" / "keyring.json"


class LocalKeyring(KeyProvider):
    """Key-encryption keys in a file readable by its owner only (mode 0600).

    The file lives outside every store. With a passphrase its contents are sealed
    with AES-256-GCM under a key derived by Argon2id (``cryptography``); without one
    it relies on file permissions, like an SSH private key without a passphrase.

    File format (JSON): ``{"sealvec_keyring": 1, "keys": {NAME: {"current": V,
    "versions": {"V": base64(32 bytes)}}}}``, or when sealed
    ``{"sealvec_keyring": 1, "sealed": {"kdf": {...}, "nonce": ..., "ciphertext": ...}}``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, passphrase: str | None = None):
        self.path = Path(path).expanduser() if path else default_keyring_path()
        self._passphrase = passphrase

    # -- file handling

    def exists(self) -> bool:
        return self.path.exists()

    def _load(self) -> dict[str, dict]:
        """Read the keyring afresh (no copy of its keys is kept between calls, and
        another process's rotation is seen at once)."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            raise KeyNotFoundError(f"keyring {self.path} does not exist") from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyAccessError(
                f"keyring {self.path} is readable by others (mode "
                f"{stat.S_IMODE(info.st_mode):o}); run: chmod 600 {self.path}"
            )
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise KeyAccessError(f"keyring {self.path} cannot be read: {error}") from None
        if not isinstance(document, dict) or document.get("sealvec_keyring") != 1:
            raise KeyAccessError(f"keyring {self.path} is not a sealvec keyring")
        if "sealed" in document:
            document = self._unseal(document["sealed"])
        elif self._passphrase is not None:
            logger.warning("keyring %s is not sealed; the passphrase given is not used", self.path)
        keys = document.get("keys")
        if not isinstance(keys, dict):
            raise KeyAccessError(f"keyring {self.path} has no keys table")
        return keys

    def _derive(self, kdf: dict) -> bytes:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        if self._passphrase is None:
            raise KeyAccessError(
                f"keyring {self.path} is sealed with a passphrase; "
                "set SEALVEC_KEYRING_PASSPHRASE or pass passphrase="
            )
        if kdf.get("name") != "argon2id":
            raise KeyAccessError(f"keyring {self.path} uses an unknown KDF")
        return Argon2id(
            salt=base64.b64decode(kdf["salt"]),
            length=KEY_SIZE,
            iterations=int(kdf["iterations"]),
            lanes=int(kdf["lanes"]),
            memory_cost=int(kdf["memory_cost"]),
        ).derive(self._passphrase.encode("utf-8"))

    def _unseal(self, sealed: dict) -> dict:
        try:
            key = self._derive(sealed["kdf"])
            plain = AESGCM(key).decrypt(
                base64.b64decode(sealed["nonce"]),
                base64.b64decode(sealed["ciphertext"]),
                b"sealvec keyring v1",
            )
        except KeyAccessError:
            raise
        except Exception:
            raise KeyAccessError(
                f"keyring {self.path} could not be opened: wrong passphrase or damaged file"
            ) from None
        return json.loads(plain)

    def _save(self, keys: dict[str, dict]) -> None:
        document: dict = {"sealvec_keyring": 1, "keys": keys}
        if self._passphrase is not None:
            salt = os.urandom(16)
            kdf = {
                "name": "argon2id",
                "salt": base64.b64encode(salt).decode(),
                "iterations": 3,
                "lanes": 4,
                "memory_cost": 65536,
            }
            nonce = os.urandom(12)
            ciphertext = AESGCM(self._derive(kdf)).encrypt(
                nonce, json.dumps(document).encode("utf-8"), b"sealvec keyring v1"
            )
            document = {
                "sealvec_keyring": 1,
                "sealed": {
                    "kdf": kdf,
                    "nonce": base64.b64encode(nonce).decode(),
                    "ciphertext": base64.b64encode(ciphertext).decode(),
                },
            }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keyring-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- key management

    @contextmanager
    def _editing(self) -> Iterator[None]:
        """Serialise read-modify-write of the keyring across processes, so a key that
        was reported created is never lost to a concurrent edit."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def create_key(self, name: str) -> str:
        """Create key ``name`` (version 1) if absent; return its versioned id."""
        with self._editing():
            parse_local_key_id(LOCAL_SCHEME + name)
            keys = self._load() if self.exists() else {}
            if name in keys:
                return f"{LOCAL_SCHEME}{name}/{keys[name]['current']}"
            keys = dict(keys)
            keys[name] = {"current": 1, "versions": {"1": _new_key_b64()}}
            self._save(keys)
            logger.info("created local key %s/1 in %s", name, self.path)
            return f"{LOCAL_SCHEME}{name}/1"

    def rotate_key(self, name: str) -> str:
        """Add a new current version of key ``name``; return its versioned id."""
        with self._editing():
            keys = dict(self._load())
            if name not in keys:
                raise KeyNotFoundError(f"key {LOCAL_SCHEME}{name} is not in keyring {self.path}")
            entry = keys[name]
            version = max(int(v) for v in entry["versions"]) + 1
            entry = {
                "current": version,
                "versions": {**entry["versions"], str(version): _new_key_b64()},
            }
            keys[name] = entry
            self._save(keys)
            logger.info("rotated local key %s to version %d", name, version)
            return f"{LOCAL_SCHEME}{name}/{version}"

    def remove_version(self, key_id: str) -> None:
        """Destroy one key version (what was wrapped under it becomes unreadable)."""
        with self._editing():
            name, version = parse_local_key_id(key_id)
            keys = dict(self._load())
            entry = keys.get(name)
            if version is None or entry is None or str(version) not in entry["versions"]:
                raise KeyNotFoundError(f"key {key_id} is not in keyring {self.path}")
            if entry["current"] == version:
                raise ValidationError(f"key {key_id} is the current version; rotate first")
            versions = {v: k for v, k in entry["versions"].items() if v != str(version)}
            keys[name] = {"current": entry["current"], "versions": versions}
            self._save(keys)

    def describe(self) -> dict[str, dict]:
        """Key names with their versions and current version; never key material."""
        return {
            name: {
                "current": int(entry["current"]),
                "versions": sorted(int(v) for v in entry["versions"]),
            }
            for name, entry in self._load().items()
        }

    def resolve(self, key_id: str) -> str:
        name, version = parse_local_key_id(key_id)
        keys = self._load()
        if name not in keys:
            raise KeyNotFoundError(f"key {LOCAL_SCHEME}{name} is not in keyring {self.path}")
        return f"{LOCAL_SCHEME}{name}/{version or keys[name]['current']}"

    def _material(self, key_id: str) -> tuple[str, bytes]:
        name, version = parse_local_key_id(key_id)
        keys = self._load()
        if name not in keys:
            raise KeyNotFoundError(f"key {LOCAL_SCHEME}{name} is not in keyring {self.path}")
        version = version or int(keys[name]["current"])
        encoded = keys[name]["versions"].get(str(version))
        if encoded is None:
            raise KeyNotFoundError(
                f"key {LOCAL_SCHEME}{name}/{version} is not in keyring {self.path} "
                "(was that version removed?)"
            )
        return f"{LOCAL_SCHEME}{name}/{version}", base64.b64decode(encoded)

    # -- KeyProvider

    def handles(self, key_id: str) -> bool:
        return key_id.startswith(LOCAL_SCHEME)

    def unversioned(self, key_id: str) -> str:
        name, _ = parse_local_key_id(key_id)
        return LOCAL_SCHEME + name

    def wrap_key(self, key_id: str, key: bytes | memoryview) -> tuple[str, bytes]:
        versioned, kek = self._material(key_id)
        return versioned, aes_key_wrap_with_padding(kek, bytes(key))

    def unwrap_key(self, versioned_key_id: str, wrapped: bytes) -> bytes:
        _, version = parse_local_key_id(versioned_key_id)
        if version is None:
            raise ValidationError(f"unwrap needs a versioned key id, got {versioned_key_id!r}")
        _, kek = self._material(versioned_key_id)
        try:
            return aes_key_unwrap_with_padding(kek, wrapped)
        except InvalidUnwrap:
            raise IntegrityError(
                f"the collection key does not unwrap under {versioned_key_id}: "
                "wrong key or tampered manifest"
            ) from None


def _new_key_b64() -> str:
    return base64.b64encode(os.urandom(KEY_SIZE)).decode("ascii")
