"""The local keyring and the key hierarchy."""

from __future__ import annotations

import json
import os

import pytest
from conftest import random_vectors

from sealvec import (
    Collection,
    IntegrityError,
    KeyAccessError,
    KeyNotFoundError,
    LocalKeyring,
    ValidationError,
)
from sealvec.keys import KeyProvider, SecretKey, unwrap_data_key, wrap_data_key


class CountingProvider(KeyProvider):
    def __init__(self, inner: KeyProvider) -> None:
        self.inner = inner
        self.unwraps = 0
        self.wraps = 0

    def wrap_key(self, key_id, key):
        self.wraps += 1
        return self.inner.wrap_key(key_id, key)

    def unwrap_key(self, versioned_key_id, wrapped):
        self.unwraps += 1
        return self.inner.unwrap_key(versioned_key_id, wrapped)


def test_one_provider_call_opens_a_collection_of_many_shards(store):
    with Collection.create(store, dimension=4) as collection:
        for batch in range(5):
            collection.add([f"{batch}-{i}" for i in range(3)], random_vectors(3, 4, seed=batch))
    provider = CountingProvider(LocalKeyring())
    with Collection.open(store, key_provider=provider) as collection:
        assert collection.count() == 15
        collection.add(["more"], random_vectors(1, 4))
        assert collection.stats()["shards"] == 6
    assert provider.unwraps == 1 and provider.wraps == 0


def test_versioned_key_id_is_recorded(store):
    with Collection.create(store, dimension=4, key_id="local:records") as collection:
        assert collection.key_id == "local:records/1"


def test_wrong_keyring_fails_closed(store, tmp_path):
    Collection.create(store, dimension=4).close()
    other = LocalKeyring(tmp_path / "other-keyring.json")
    other.create_key("default")
    with pytest.raises(IntegrityError, match="does not unwrap under local:default/1"):
        Collection.open(store, key_provider=other)


def test_missing_key_names_the_versioned_id(store, tmp_path):
    Collection.create(store, dimension=4, key_id="local:team").close()
    empty = LocalKeyring(tmp_path / "empty.json")
    empty.create_key("unrelated")
    with pytest.raises(KeyNotFoundError, match="local:team"):
        Collection.open(store, key_provider=empty)
    with pytest.raises(KeyNotFoundError, match="does not exist"):
        Collection.open(store, key_provider=LocalKeyring(tmp_path / "absent.json"))


def test_removed_key_version_is_named(tmp_path):
    keyring = LocalKeyring(tmp_path / "k.json")
    first = keyring.create_key("main")
    key_id, wrapped = keyring.wrap_key("local:main", os.urandom(32))
    assert key_id == first == "local:main/1"
    second = keyring.rotate_key("main")
    assert second == "local:main/2"
    keyring.remove_version(first)
    with pytest.raises(KeyNotFoundError, match="local:main/1"):
        LocalKeyring(tmp_path / "k.json").unwrap_key(first, wrapped)
    with pytest.raises(ValidationError, match="current version"):
        keyring.remove_version(second)


def test_passphrase_sealed_keyring(tmp_path, store):
    path = tmp_path / "sealed.json"
    keyring = LocalKeyring(path, passphrase="correct horse battery staple")
    with Collection.create(store, dimension=4, key_provider=keyring) as collection:
        collection.add(["a"], random_vectors(1, 4))
    document = json.loads(path.read_text())
    assert "keys" not in document and "sealed" in document
    assert document["sealed"]["kdf"]["name"] == "argon2id"
    assert os.stat(path).st_mode & 0o777 == 0o600
    reopened = LocalKeyring(path, passphrase="correct horse battery staple")
    with Collection.open(store, key_provider=reopened) as collection:
        assert collection.count() == 1
    with pytest.raises(KeyAccessError, match="wrong passphrase"):
        Collection.open(store, key_provider=LocalKeyring(path, passphrase="wrong"))
    with pytest.raises(KeyAccessError, match="SEALVEC_KEYRING_PASSPHRASE"):
        Collection.open(store, key_provider=LocalKeyring(path))


def test_keyring_readable_by_others_is_refused(tmp_path):
    keyring = LocalKeyring(tmp_path / "k.json")
    keyring.create_key("default")
    os.chmod(keyring.path, 0o644)
    with pytest.raises(KeyAccessError, match="chmod 600"):
        LocalKeyring(tmp_path / "k.json").resolve("local:default")


def test_bad_key_ids_are_rejected(tmp_path):
    keyring = LocalKeyring(tmp_path / "k.json")
    for bad in ("default", "local:", "local:a b", "local:x/0", "local:x/v1"):
        with pytest.raises(ValidationError):
            keyring.wrap_key(bad, os.urandom(32))


def test_data_key_wrap_round_trip_and_tamper():
    collection_key = SecretKey.generate()
    data_key = SecretKey.generate()
    wrapped = wrap_data_key(collection_key, data_key)
    assert bytes(unwrap_data_key(collection_key, wrapped).material()) == bytes(
        data_key.material()
    )
    damaged = bytearray(wrapped)
    damaged[5] ^= 1
    with pytest.raises(IntegrityError):
        unwrap_data_key(collection_key, bytes(damaged))
    with pytest.raises(IntegrityError):
        unwrap_data_key(SecretKey.generate(), wrapped)


def test_concurrent_keyring_edits_lose_no_key(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "shared.json"
    code = (
        "import sys\nfrom sealvec import LocalKeyring\n"
        "for i in range(5):\n    LocalKeyring(sys.argv[1]).create_key(f'{sys.argv[2]}{i}')\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [
        subprocess.Popen([sys.executable, "-c", code, str(path), prefix], env=env)
        for prefix in ("a", "b", "c")
    ]
    assert all(child.wait() == 0 for child in children)
    assert len(LocalKeyring(path).describe()) == 15
