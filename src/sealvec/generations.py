"""Rollback protection that outlives a process: the highest manifest generation this
machine has seen of each collection, kept outside every store.

A manifest's name and sealed header carry its generation, so an older manifest
cannot pose as a newer one. But someone who can write the storage could delete the
newest manifests and leave an older, authentic generation as the newest one. A
process that has the collection open refuses that (it remembers what it saw);
this record makes a later process refuse it too.

The record is a small JSON file, ``$SEALVEC_STATE_DIR/generations.json`` (default
``$XDG_STATE_HOME/sealvec`` or ``~/.local/state/sealvec``): for each collection id
*at each location*, the highest generation seen. Keying by location keeps a copy of
a store (written to on its own afterwards) from being mistaken for a rollback of
the original. It holds no secrets. Restoring a store from a backup in place, on
purpose, means removing its entry.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from pathlib import Path

from sealvec.errors import IntegrityError

logger = logging.getLogger(__name__)


def default_state_path() -> Path:
    explicit = os.environ.get("SEALVEC_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser() / "generations.json"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "sealvec" / "generations.json"


class GenerationRecord:
    """Highest generation seen per collection, shared by the processes of a user."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else default_state_path()

    def _read(self) -> dict[str, int]:
        try:
            value = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            logger.warning("generation record %s is unreadable; starting afresh", self.path)
            return {}
        return {k: int(v) for k, v in value.items()} if isinstance(value, dict) else {}

    @staticmethod
    def key(collection_id: bytes, location: str) -> str:
        return f"{collection_id.hex()}@{location}"

    def check(self, collection_id: bytes, location: str, generation: int) -> None:
        """Refuse a newest generation older than one seen before on this machine."""
        key = self.key(collection_id, location)
        seen = self._read().get(key, 0)
        if generation < seen:
            raise IntegrityError(
                f"the store's newest manifest generation ({generation}) is older than "
                f"generation {seen} seen before: rollback refused (if the store was "
                f"restored from a backup on purpose, remove {key!r} from {self.path})"
            )

    def record(self, collection_id: bytes, location: str, generation: int) -> None:
        """Remember ``generation`` if it is the highest seen; best effort."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(self.path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                values = self._read()
                key = self.key(collection_id, location)
                if values.get(key, 0) >= generation:
                    return
                values[key] = generation
                fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".generations-")
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(values, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
        except OSError as error:
            logger.warning("cannot update generation record %s: %s", self.path, error)
