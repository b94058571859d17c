"""Settings for the command line and services: where a collection lives, which key
protects it, which embedder makes its vectors.

A collection is named by a *location*, a local directory (``./store``) or an Azure
blob URL (``https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX``), and protected
by a *key id*, ``local:NAME`` (the local keyring) or a Key Vault key URL
(``https://VAULT.vault.azure.net/keys/NAME``). Settings come, highest first, from
command-line flags, environment variables, then a TOML config file
(``--config``, ``$SEALVEC_CONFIG`` or ``~/.config/sealvec/config.toml``)::

    [sealvec]
    store = "https://acct.blob.core.windows.net/vectors/patients"
    key = "https://myvault.vault.azure.net/keys/sealvec-kek"
    embedder = "azure-openai"            # local | openai | azure-openai
    ca_file = "/etc/ssl/certs/ca-certificates.crt"   # optional

    [azure_openai]
    endpoint = "https://myaoai.openai.azure.com"
    deployment = "text-embedding-3-small"
    api_version = "2024-10-21"
    dimension = 1536

Secrets never go in the file: API keys come from ``OPENAI_API_KEY`` /
``AZURE_OPENAI_API_KEY`` (or Entra ID), storage from Entra ID or
``AZURE_STORAGE_CONNECTION_STRING``, the keyring passphrase from
``SEALVEC_KEYRING_PASSPHRASE``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sealvec.errors import ValidationError
from sealvec.keys import KeyProvider, LocalKeyring
from sealvec.storage import LocalDirectory, Storage
from sealvec.transport import is_loopback

ENVIRONMENT = {
    "store": "SEALVEC_STORE",
    "key": "SEALVEC_KEY",
    "keyring": "SEALVEC_KEYRING",
    "memory_lock": "SEALVEC_MEMORY_LOCK",
    "embedder": "SEALVEC_EMBEDDER",
    "ca_file": "SEALVEC_CA_FILE",
    "storage_api_version": "SEALVEC_STORAGE_API_VERSION",
    "allow_insecure_loopback": "SEALVEC_ALLOW_INSECURE_LOOPBACK",
}


@dataclass
class Settings:
    store: str | None = None
    key: str = "local:default"
    keyring: str | None = None
    memory_lock: str = "required"
    threads: int = 0
    embedder: str = "local"
    ca_file: str | None = None
    storage_api_version: str | None = None
    allow_insecure_loopback: bool = False
    openai: dict[str, Any] = field(default_factory=dict)
    azure_openai: dict[str, Any] = field(default_factory=dict)


def default_config_path() -> Path:
    explicit = os.environ.get("SEALVEC_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "sealvec" / "config.toml"


def load_settings(config_path: str | None = None, **flags: Any) -> Settings:
    """Merge the config file, the environment and ``flags`` (None = not given)."""
    settings = Settings()
    path = Path(config_path).expanduser() if config_path else default_config_path()
    if path.exists():
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ValidationError(f"config file {path} cannot be read: {error}") from None
        _apply(settings, document.get("sealvec", {}), f"{path} [sealvec]")
        settings.openai = dict(document.get("openai", {}))
        settings.azure_openai = dict(document.get("azure_openai", {}))
    elif config_path:
        raise ValidationError(f"config file {path} does not exist")
    _apply(
        settings,
        {name: os.environ[var] for name, var in ENVIRONMENT.items() if os.environ.get(var)},
        "the environment",
    )
    _apply(settings, {k: v for k, v in flags.items() if v is not None}, "the command line")
    return settings


def _apply(settings: Settings, values: dict[str, Any], source: str) -> None:
    known = {f.name: f for f in fields(Settings)}
    for name, value in values.items():
        if name not in known or name in ("openai", "azure_openai"):
            raise ValidationError(f"unknown setting {name!r} in {source}")
        if name == "allow_insecure_loopback" and isinstance(value, str):
            value = value.lower() in ("1", "true", "yes")
        if name == "threads":
            value = int(value)
        setattr(settings, name, value)


def is_azure_blob_url(location: str) -> bool:
    return location.startswith(("https://", "http://"))


def open_storage(location: str, settings: Settings) -> Storage:
    """The storage backend for a location string."""
    if not is_azure_blob_url(location):
        return LocalDirectory(location)
    from sealvec.azure_blob import AzureBlobStorage

    connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    parsed = urlparse(location)
    options: dict[str, Any] = {
        "api_version": settings.storage_api_version,
        "connection_verify": settings.ca_file or True,
        "allow_insecure_loopback": settings.allow_insecure_loopback,
    }
    if connection_string:
        container, _, prefix = parsed.path.lstrip("/").partition("/")
        if _is_path_style(parsed.hostname or ""):
            _account, _, rest = parsed.path.lstrip("/").partition("/")
            container, _, prefix = rest.partition("/")
        return AzureBlobStorage.from_connection_string(
            connection_string, container, prefix, **options
        )
    from azure.identity import DefaultAzureCredential

    return AzureBlobStorage(location, credential=DefaultAzureCredential(), **options)


def _is_path_style(host: str) -> bool:
    return is_loopback(host)


class RoutingKeyProvider(KeyProvider):
    """Sends each key id to the provider that serves it: ``local:`` ids to the local
    keyring, Key Vault URLs to Azure Key Vault (created on first use)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._local = LocalKeyring(settings.keyring, os.environ.get("SEALVEC_KEYRING_PASSPHRASE"))
        self._key_vault: KeyProvider | None = None

    @property
    def local(self) -> LocalKeyring:
        return self._local

    def _provider(self, key_id: str) -> KeyProvider:
        if key_id.startswith("local:"):
            return self._local
        if key_id.startswith("https://") and "/keys/" in key_id:
            if self._key_vault is None:
                from sealvec.keyvault import KeyVaultKeyProvider

                self._key_vault = KeyVaultKeyProvider(
                    connection_verify=self._settings.ca_file or True
                )
            return self._key_vault
        raise ValidationError(
            f"key id {key_id!r} is neither local:NAME nor a Key Vault key URL "
            "(https://VAULT.vault.azure.net/keys/NAME)"
        )

    def handles(self, key_id: str) -> bool:
        try:
            self._provider(key_id)
        except ValidationError:
            return False
        return True

    def unversioned(self, key_id: str) -> str:
        return self._provider(key_id).unversioned(key_id)

    def wrap_key(self, key_id: str, key):
        return self._provider(key_id).wrap_key(key_id, key)

    def unwrap_key(self, versioned_key_id: str, wrapped: bytes) -> bytes:
        return self._provider(versioned_key_id).unwrap_key(versioned_key_id, wrapped)


def embedder_for(settings: Settings):
    """The embedder the settings name."""
    if settings.embedder == "local":
        from sealvec.embedders import default_embedder

        return default_embedder()
    if settings.embedder == "openai":
        from sealvec.openai_embedders import OpenAIEmbedder

        options = dict(settings.openai)
        if "model" not in options or "dimension" not in options:
            raise ValidationError("the [openai] table needs model and dimension")
        return OpenAIEmbedder(
            options.pop("model"),
            dimension=int(options.pop("dimension")),
            api_key=os.environ.get("OPENAI_API_KEY"),
            ca_file=settings.ca_file,
            **options,
        )
    if settings.embedder == "azure-openai":
        from sealvec.openai_embedders import AzureOpenAIEmbedder

        options = dict(settings.azure_openai)
        missing = {"endpoint", "deployment", "dimension", "api_version"} - set(options)
        if missing:
            raise ValidationError(f"the [azure_openai] table needs {', '.join(sorted(missing))}")
        credentials: dict[str, Any] = {}
        if os.environ.get("AZURE_OPENAI_API_KEY"):
            credentials["api_key"] = os.environ["AZURE_OPENAI_API_KEY"]
        else:
            from azure.identity import DefaultAzureCredential, get_bearer_token_provider

            credentials["azure_ad_token_provider"] = get_bearer_token_provider(
                DefaultAzureCredential(), "https://cognitiveservices.azure.com/.default"
            )
        return AzureOpenAIEmbedder(
            options.pop("endpoint"),
            options.pop("deployment"),
            dimension=int(options.pop("dimension")),
            api_version=options.pop("api_version"),
            ca_file=settings.ca_file,
            **credentials,
            **options,
        )
    raise ValidationError(
        f"embedder must be local, openai or azure-openai, got {settings.embedder!r}"
    )
