"""The ``sealvec`` command line.

Results go to standard output (``--json`` for scripts); progress and errors go to
standard error. Every error is one line and a non-zero exit code:

    1  other sealvec error      4  key missing or refused
    2  bad usage or input       5  store locked by another writer
    3  integrity failure        130 interrupted
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sealvec.errors import (
    IntegrityError,
    KeyAccessError,
    KeyNotFoundError,
    SealvecError,
    StoreLockedError,
    ValidationError,
)

EXIT_CODES = (
    (ValidationError, 2),
    (IntegrityError, 3),
    (KeyNotFoundError, 4),
    (KeyAccessError, 4),
    (StoreLockedError, 5),
)

out = Console()
err = Console(stderr=True)


def _exit_code(error: SealvecError) -> int:
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return 1


class _Settings:
    """What every command needs: merged settings, storage and key providers."""

    def __init__(self, settings) -> None:
        from sealvec.config import RoutingKeyProvider

        self.settings = settings
        self.memory_lock = settings.memory_lock
        self.threads = settings.threads
        self._provider = RoutingKeyProvider(settings)

    def provider(self):
        return self._provider

    def storage(self, store: str | None):
        from sealvec.config import open_storage

        location = store or self.settings.store
        if not location:
            raise ValidationError(
                "name a store: an argument, SEALVEC_STORE, or store= in the config file"
            )
        return open_storage(location, self.settings)

    def open(self, store: str | None, search_backend: str = "native"):
        from sealvec.collection import Collection

        return Collection.open(
            self.storage(store),
            key_provider=self._provider,
            memory_lock=self.memory_lock,
            threads=self.threads,
            search_backend=search_backend,
        )

    def embedder(self):
        from sealvec.config import embedder_for

        return embedder_for(self.settings)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal and not os.environ.get("SEALVEC_PROGRESS"),
    )


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


store_argument = click.argument("store", required=False)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", help="TOML settings file (default ~/.config/sealvec/config.toml).")
@click.option(
    "--keyring",
    help="Local keyring file (default ~/.config/sealvec/keyring.json; or SEALVEC_KEYRING). "
    "Passphrase, if any, from SEALVEC_KEYRING_PASSPHRASE.",
)
@click.option(
    "--memory-lock",
    type=click.Choice(["required", "best_effort"]),
    default=None,
    help="Refuse to run without locked memory (default), or continue unlocked with a warning.",
)
@click.option("--threads", type=click.IntRange(min=0), default=None, help="0 = all cores.")
@click.option("--ca-file", help="CA bundle for Azure and OpenAI endpoints (TLS is always verified).")
@click.option(
    "--embedder",
    type=click.Choice(["local", "openai", "azure-openai"]),
    default=None,
    help="Embedder for texts (default local; others configured in the config file).",
)
@click.option("-v", "--verbose", count=True, help="Log progress (-v) or details (-vv).")
@click.version_option(package_name="sealvec")
@click.pass_context
def cli(ctx: click.Context, config_path, keyring, memory_lock, threads, ca_file, embedder, verbose) -> None:
    """sealvec: an encrypted vector store for retrieval over sensitive data.

    STORE is a directory or an Azure blob URL (https://ACCOUNT.blob.core.windows.net/
    CONTAINER/PREFIX); it may be left out when SEALVEC_STORE or the config file names it.
    """
    from sealvec.config import load_settings

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = _Settings(
        load_settings(
            config_path,
            keyring=keyring,
            memory_lock=memory_lock,
            threads=threads,
            ca_file=ca_file,
            embedder=embedder,
        )
    )


@cli.command()
@store_argument
@click.option("--dim", "dimension", type=click.IntRange(1, 65536), required=True)
@click.option("--metric", type=click.Choice(["cosine", "ip", "l2"]), default="cosine")
@click.option("--key", "key_id", default=None, help="local:NAME or a Key Vault key URL.")
@click.option("--model", default=None, help="Label of the embedding model, e.g. local:all-MiniLM-L6-v2.")
@json_option
@click.pass_obj
def init(settings: _Settings, store, dimension, metric, key_id, model, as_json) -> None:
    """Create an empty collection in STORE."""
    from sealvec.collection import Collection

    with Collection.create(
        settings.storage(store),
        dimension=dimension,
        metric=metric,
        key_id=key_id or settings.settings.key,
        key_provider=_creation_provider(settings, key_id or settings.settings.key),
        model=model,
        memory_lock=settings.memory_lock,
    ) as collection:
        stats = collection.stats()
    if as_json:
        _print_json(stats)
    else:
        out.print(f"created collection {stats['collection_id']} in {store} (key {stats['key_id']})")


def _read_jsonl(path: Path, id_field: str, text_field: str) -> list[dict[str, Any]]:
    """Records from a JSONL file, each checked, naming the line of the first problem."""
    records = []
    first_line: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValidationError(f"{path} is not UTF-8 text (byte {error.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            raise ValidationError(f"{path}:{number} is not valid JSON") from None
        if not isinstance(value, dict) or not isinstance(value.get(id_field), str):
            raise ValidationError(f"{path}:{number} has no string field {id_field!r}")
        if not isinstance(value.get(text_field), str):
            raise ValidationError(f"{path}:{number} has no string field {text_field!r}")
        for key, item in value.items():
            if key not in (id_field, text_field) and not isinstance(
                item, (str, int, float, bool, type(None))
            ):
                raise ValidationError(
                    f"{path}:{number} field {key!r} is not a scalar; metadata values must "
                    "be strings, numbers, booleans or null"
                )
        if value[id_field] in first_line:
            raise ValidationError(
                f"{path}:{number} repeats the id of line {first_line[value[id_field]]}"
            )
        first_line[value[id_field]] = number
        records.append(value)
    if not records:
        raise ValidationError(f"{path} holds no records")
    return records


def _load_vectors(path: Path, *, rows: int | None = None) -> np.ndarray:
    """A float32 matrix (or one vector) from a .npy file, with one-line errors."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValidationError(
            f"{path} is not a readable .npy array ({_one_line(error)})"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f":
        raise ValidationError(f"{path} must hold a float32 array, got {getattr(array, 'dtype', type(array).__name__)}")
    if rows is not None and (array.ndim != 2 or len(array) != rows):
        raise ValidationError(
            f"{path} has shape {array.shape}; expected ({rows}, dimension), one row per record"
        )
    return array


@cli.command()
@store_argument
@click.argument("records", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--vectors",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A .npy float32 array, row i for record i. Without it, texts are embedded.",
)
@click.option("--model", default=None, help="Model label to record with --vectors.")
@click.option("--id-field", default="id", show_default=True)
@click.option("--text-field", default="text", show_default=True)
@click.option(
    "--metric",
    type=click.Choice(["cosine", "ip", "l2"]),
    default=None,
    help="For a new collection (default cosine); must match an existing one.",
)
@click.option("--key", "key_id", default=None, help="local:NAME or a Key Vault key URL.")
@click.option("--batch-size", type=click.IntRange(1, 1_000_000), default=512, show_default=True)
@click.option(
    "--on-existing",
    type=click.Choice(["skip", "replace", "error"]),
    default="skip",
    show_default=True,
    help="What to do with ids already stored (skip makes re-runs resume).",
)
@json_option
@click.pass_obj
def ingest(
    settings: _Settings,
    store,
    records,
    vectors,
    model,
    id_field,
    text_field,
    metric,
    key_id,
    batch_size,
    on_existing,
    as_json,
) -> None:
    """Add RECORDS (JSONL: id, text, other fields as metadata) to STORE.

    Creates the collection if STORE has none. Each batch commits on its own, so an
    interrupted ingest keeps every committed batch and a re-run skips them.
    """
    from sealvec.collection import Collection, collection_exists

    rows = _read_jsonl(records, id_field, text_field)
    embedder = None
    if vectors is not None:
        matrix = _load_vectors(vectors, rows=len(rows))
        dimension = matrix.shape[1]
    else:
        embedder = settings.embedder()
        dimension = embedder.dimension
        if model is not None and model != embedder.model_label:
            raise ValidationError(
                f"--model {model} does not name the configured embedder "
                f"{embedder.model_label}; --model labels precomputed --vectors"
            )
        model = embedder.model_label

    storage = settings.storage(store)
    existing = settings.open(store) if collection_exists(storage) else None
    try:
        if existing is not None:
            _check_matches(existing, dimension=dimension, metric=metric, model=model)
        if embedder is None:
            # Check every vector before the first commit, naming the row of the file.
            from sealvec.validation import check_vectors

            check_vectors(
                np.asarray(matrix),
                dimension,
                existing.metric if existing is not None else metric or "cosine",
                name=str(vectors),
            )
    except BaseException:
        if existing is not None:
            existing.close()
        raise
    collection = existing or Collection.create(
        storage,
        dimension=dimension,
        metric=metric or "cosine",
        key_id=key_id or settings.settings.key,
        key_provider=_creation_provider(settings, key_id or settings.settings.key),
        model=model,
        memory_lock=settings.memory_lock,
        threads=settings.threads,
    )
    from sealvec.ingest import ingest_records

    with collection, _progress() as progress:
        task = progress.add_task("ingest", total=len(rows))
        report = ingest_records(
            collection,
            rows,
            embedder=embedder,
            vectors=matrix if embedder is None else None,
            id_field=id_field,
            text_field=text_field,
            batch_size=batch_size,
            on_existing=on_existing,
            on_progress=lambda done, total: progress.update(task, completed=done),
        )
        stats = collection.stats()
    added, skipped = report.added, report.skipped
    result = {"added": added, "skipped": skipped, **stats}
    if as_json:
        _print_json(result)
    else:
        out.print(
            f"added {added}, skipped {skipped} already stored; "
            f"{stats['records']} records in {stats['shards']} shards (generation {stats['generation']})"
        )


def _check_matches(collection, *, dimension: int, metric: str | None, model: str | None) -> None:
    """Refuse input that does not fit an existing collection, before any work."""
    if collection.dimension != dimension:
        raise ValidationError(
            f"the collection has dimension {collection.dimension}, the input {dimension}"
        )
    if metric is not None and metric != collection.metric:
        raise ValidationError(
            f"--metric {metric} does not match the collection's metric {collection.metric}"
        )
    if model is not None and collection.model not in (None, model):
        raise ValidationError(
            f"the collection's vectors come from {collection.model}, the input from {model}"
        )


def _creation_provider(settings: _Settings, key_id: str):
    """The provider for a new collection; a local key is created if missing."""
    return settings.provider().local if key_id.startswith("local:") else settings.provider()


def _query_vector(
    settings: _Settings, collection, text: str | None, vector_path: Path | None
) -> np.ndarray:
    if text is None and vector_path is None:
        raise ValidationError("give a query TEXT or --vector FILE.npy")
    if text is not None and vector_path is not None:
        raise ValidationError("give a query TEXT or --vector FILE.npy, not both")
    if vector_path is not None:
        return np.array(_load_vectors(vector_path))
    embedder = settings.embedder()
    if collection.model not in (None, embedder.model_label):
        raise ValidationError(
            f"the collection was embedded with {collection.model}; the configured embedder "
            f"is {embedder.model_label}. Configure that embedder or query with --vector"
        )
    return embedder.embed_query(text)


@cli.command()
@store_argument
@click.argument("text", required=False)
@click.option("--vector", "vector_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-k", "k", type=click.IntRange(1, 2**40), default=5, show_default=True)
@click.option("-d", "--documents", is_flag=True, help="Show each hit's document.")
@click.option("--where", "where_json", help='Metadata filter as JSON, e.g. \'{"module": "csv"}\'.')
@click.option(
    "--watch",
    type=click.FloatRange(min=0.05),
    help="Repeat the query every SECONDS, picking up new generations, until interrupted.",
)
@click.option(
    "--backend",
    type=click.Choice(["native", "faiss", "hnsw", "ivf", "bf16"]),
    default="native",
    show_default=True,
    help="Exact (native kernel or faiss.knn), approximate from the store's hnsw/ivf index "
    "(see `sealvec index`), or a bfloat16 scan re-scored exactly (bf16).",
)
@click.option("--ef-search", type=click.IntRange(min=1), help="hnsw: candidates kept per query.")
@click.option("--nprobe", type=click.IntRange(min=1), help="ivf: lists scanned per query.")
@click.option(
    "--candidates", type=click.IntRange(1, 2**40), help="bf16: rows per query scored exactly."
)
@json_option
@click.pass_obj
def query(
    settings: _Settings,
    store,
    text,
    vector_path,
    k,
    documents,
    where_json,
    watch,
    backend,
    ef_search,
    nprobe,
    candidates,
    as_json,
) -> None:
    """Top-k records of STORE for a query TEXT (local embedder) or a .npy vector."""
    where = _parse_where(where_json)
    include = ("documents", "metadata") if documents else ("metadata",)
    with settings.open(store, search_backend=backend) as collection:
        vector = _query_vector(settings, collection, text, vector_path)
        shown = None
        while True:
            results = collection.search(
                vector,
                k=k,
                include=include,
                where=where,
                ef_search=ef_search,
                nprobe=nprobe,
                candidates=candidates,
            )
            if watch is None:
                _show_results(results, documents, as_json)
                return
            if results.generation != shown:  # print again only when the data changed
                if not as_json:
                    err.print(f"generation {results.generation}")
                _show_results(results, documents, as_json)
                shown = results.generation
            time.sleep(watch)
            collection.refresh()


def _parse_where(where_json: str | None) -> dict | None:
    if where_json is None:
        return None
    try:
        where = json.loads(where_json)
    except ValueError:
        raise ValidationError("--where must be a JSON object") from None
    if not isinstance(where, dict):
        raise ValidationError("--where must be a JSON object")
    return where


def _show_results(results, documents: bool, as_json: bool) -> None:
    if as_json:
        _print_json(
            [
                [
                    {"id": h.id, "score": h.score, "metadata": h.metadata}
                    | ({"document": h.document} if documents else {})
                    for h in hits
                ]
                for hits in results
            ]
        )
        return
    for hits in results:
        table = Table("rank", "score", "id", *(["document"] if documents else []))
        for rank, hit in enumerate(hits, start=1):
            extra = [(hit.document or "").strip().splitlines()[0:3]] if documents else []
            table.add_row(
                str(rank), f"{hit.score:.4f}", hit.id, *["\n".join(e) for e in extra]
            )
        out.print(table)


@cli.command()
@store_argument
@json_option
@click.pass_obj
def stats(settings: _Settings, store, as_json) -> None:
    """Counts and sizes of STORE from its newest manifest (no shard is decrypted)."""
    from sealvec.verify import describe_store

    info = describe_store(
        settings.storage(store),
        key_provider=settings.provider(),
        memory_lock=settings.memory_lock,
    )
    if as_json:
        _print_json(info)
        return
    table = Table("field", "value")
    for key, value in info.items():
        if key == "indexes":
            value = "\n".join(
                f"{i['kind']}: {i['rows']} rows, "
                + ", ".join(f"{name}={param}" for name, param in i["params"].items())
                for i in value
            ) or "none"
        table.add_row(key, str(value))
    out.print(table)


@cli.command()
@store_argument
@json_option
@click.pass_obj
def verify(settings: _Settings, store, as_json) -> None:
    """Authenticate every manifest and shard of STORE; prints no plaintext."""
    from sealvec.verify import verify_store

    with _progress() as progress:
        task = progress.add_task("verify", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = verify_store(
            settings.storage(store),
            key_provider=settings.provider(),
            memory_lock=settings.memory_lock,
            on_progress=advance,
        )
    if as_json:
        _print_json(report)
    else:
        out.print(
            f"ok: generation {report['generation']}, {report['manifests_checked']} manifests, "
            f"{report['shards_checked']} shards, {report['rows']} rows authenticated"
            + (
                f", {report['indexes_checked']} indexes authenticated"
                if report["indexes_checked"]
                else ""
            )
            + (
                f"; {len(report['manifests_under_destroyed_keys'])} older manifests not "
                "checked (their key-encryption key version was removed)"
                if report["manifests_under_destroyed_keys"]
                else ""
            )
            + (
                f"; {len(report['unreferenced'])} unreferenced objects (garbage)"
                if report["unreferenced"]
                else ""
            )
        )


def _ids_argument(ids: tuple[str, ...], ids_file: Path | None) -> list[str]:
    values = list(ids)
    if ids_file is not None:
        values += [line.strip() for line in ids_file.read_text(encoding="utf-8").splitlines()]
    values = [v for v in values if v]
    if not values:
        raise ValidationError("give ids as arguments or with --ids-file")
    return values


ids_arguments = [
    click.argument("ids", nargs=-1),
    click.option(
        "--ids-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="A file with one id a line.",
    ),
]


def _with_ids(function):
    for decorator in reversed(ids_arguments):
        function = decorator(function)
    return function


def _report(as_json: bool, value: dict, text: str) -> None:
    if as_json:
        _print_json(value)
    else:
        out.print(text)


@cli.command()
@store_argument
@_with_ids
@json_option
@click.pass_obj
def delete(settings: _Settings, store, ids, ids_file, as_json) -> None:
    """Delete records by id (their bytes remain until compaction; see forget)."""
    with settings.open(store) as collection:
        removed = collection.delete(_ids_argument(ids, ids_file))
        generation = collection.generation
    _report(
        as_json,
        {"deleted": removed, "generation": generation},
        f"deleted {removed} records (generation {generation})",
    )


@cli.command()
@store_argument
@_with_ids
@json_option
@click.pass_obj
def forget(settings: _Settings, store, ids, ids_file, as_json) -> None:
    """Crypto-shred records: rewrite their shards under fresh keys, destroy the old
    keys and every older manifest generation."""
    with settings.open(store) as collection:
        found = collection.forget(_ids_argument(ids, ids_file))
        generation = collection.generation
    _report(
        as_json,
        {"forgotten": found, "generation": generation},
        f"forgot {found} ids (generation {generation}); older generations deleted",
    )


@cli.command()
@store_argument
@click.option("--target-rows", type=click.IntRange(min=1), default=65_536, show_default=True)
@json_option
@click.pass_obj
def compact(settings: _Settings, store, target_rows, as_json) -> None:
    """Merge small shards and drop deleted rows."""
    with settings.open(store) as collection:
        report = collection.compact(target_rows=target_rows)
        report["generation"] = collection.generation
    _report(
        as_json,
        report,
        f"{report['shards_before']} shards -> {report['shards_after']}, "
        f"{report['rows_dropped']} deleted rows dropped (generation {report['generation']})",
    )


@cli.command()
@store_argument
@click.option(
    "--kind", type=click.Choice(["hnsw", "ivf"]), default="hnsw", show_default=True
)
@click.option("--m", type=click.IntRange(min=4), help="hnsw: graph degree (default 32).")
@click.option(
    "--ef-construction", type=click.IntRange(min=8), help="hnsw: build effort (default 100)."
)
@click.option(
    "--ef-search", type=click.IntRange(min=1), help="hnsw: default query effort (default 64)."
)
@click.option("--nlist", type=click.IntRange(min=1), help="ivf: lists (default ~4 sqrt(rows)).")
@click.option(
    "--nprobe", type=click.IntRange(min=1), help="ivf: default lists per query (nlist / 8)."
)
@click.option("--train-rows", type=click.IntRange(min=1), help="ivf: k-means sample size.")
@json_option
@click.pass_obj
def index(
    settings: _Settings, store, kind, m, ef_construction, ef_search, nlist, nprobe, train_rows,
    as_json,
) -> None:
    """Build a sealed approximate-search index (HNSW or IVF-Flat) over STORE.

    Query it with `sealvec query --backend hnsw|ivf`. Rows added later are searched
    exactly until the next build; compaction and forget drop the index.
    """
    params = (
        {"m": m, "ef_construction": ef_construction, "ef_search": ef_search}
        if kind == "hnsw"
        else {"nlist": nlist, "nprobe": nprobe, "train_rows": train_rows}
    )
    other = (nlist, nprobe, train_rows) if kind == "hnsw" else (m, ef_construction, ef_search)
    if any(value is not None for value in other):
        raise ValidationError(f"those options do not apply to the {kind} index")
    with settings.open(store) as collection:
        report = collection.build_index(kind, **{k: v for k, v in params.items() if v is not None})
    _report(
        as_json,
        report,
        f"built {kind} index over {report['rows']} rows in {report['build_seconds']:.2f} s "
        f"({report['bytes']} bytes sealed; generation {report['generation']})",
    )


@cli.command("rotate-key")
@store_argument
@click.option(
    "--collection-key",
    "rotate_collection_key",
    is_flag=True,
    help="Also replace the collection key (re-wraps every shard's data key).",
)
@click.option(
    "--new-kek-version/--no-new-kek-version",
    default=True,
    show_default=True,
    help="For a local key: create a new key version first.",
)
@json_option
@click.pass_obj
def rotate_key(settings: _Settings, store, rotate_collection_key, new_kek_version, as_json) -> None:
    """Re-wrap the collection key under a new key-encryption key version; no vector is
    re-encrypted. The old version can then be removed from the keyring."""
    keyring = settings.provider().local
    with settings.open(store) as collection:
        previous = collection.key_id
        if new_kek_version and previous.startswith("local:"):
            keyring.rotate_key(keyring.unversioned(previous).removeprefix("local:"))
        key_id = collection.rotate_key_encryption_key()
        if rotate_collection_key:
            key_id = collection.rotate_collection_key()
        generation = collection.generation
    _report(
        as_json,
        {"previous_key_id": previous, "key_id": key_id, "generation": generation},
        f"collection key now wrapped under {key_id} (was {previous}). Other collections "
        f"protected by the same key still use {previous} until they are rotated too; "
        "once none does, remove it (sealvec keyring remove-version, or disable it in "
        "Key Vault)",
    )


@cli.group()
def keyring() -> None:
    """Manage the local keyring (key names and versions; key material is never shown)."""


@keyring.command("list")
@json_option
@click.pass_obj
def keyring_list(settings: _Settings, as_json) -> None:
    """Keys, their versions and the current one."""
    keys = settings.provider().local.describe()
    if as_json:
        _print_json(keys)
        return
    for name, entry in sorted(keys.items()):
        versions = ", ".join(str(v) for v in entry["versions"])
        out.print(f"local:{name}  versions {versions}  current {entry['current']}")


@keyring.command("create")
@click.argument("name")
@click.pass_obj
def keyring_create(settings: _Settings, name) -> None:
    """Create key NAME (version 1) if it does not exist."""
    out.print(settings.provider().local.create_key(name))


@keyring.command("rotate")
@click.argument("name")
@click.pass_obj
def keyring_rotate(settings: _Settings, name) -> None:
    """Add a new current version of key NAME (then run rotate-key on each store)."""
    out.print(settings.provider().local.rotate_key(name))


@keyring.command("remove-version")
@click.argument("key_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def keyring_remove_version(settings: _Settings, key_id, yes) -> None:
    """Destroy KEY_ID (local:NAME/VERSION): whatever is wrapped only under it becomes
    unreadable for good."""
    from sealvec.keys import parse_local_key_id

    keyring = settings.provider().local
    name, version = parse_local_key_id(key_id)
    if version is None or version not in keyring.describe().get(name, {}).get("versions", []):
        raise KeyNotFoundError(f"key {key_id} is not in keyring {keyring.path}")
    if not yes:
        if not sys.stdin.isatty():
            raise ValidationError("refusing to destroy a key without a terminal; pass --yes")
        click.confirm(
            f"Destroy {key_id}? Collections still wrapped under it can no longer be opened",
            abort=True,
            err=True,
        )
    keyring.remove_version(key_id)
    out.print(f"removed {key_id}")


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("suite_args", nargs=-1, type=click.UNPROCESSED)
def bench(suite_args) -> None:
    """Run the benchmark suite (benchmarks/suite.py of a source checkout): sealvec
    vs faiss, numpy and usearch, cold open and ingest vs AES-GCM, with ratios.
    Arguments pass through, e.g. `sealvec bench --quick`."""
    import importlib.util

    candidates = [Path.cwd() / "benchmarks" / "suite.py"]
    candidates += [p / "benchmarks" / "suite.py" for p in Path(__file__).resolve().parents[:3]]
    suite = next((c for c in candidates if c.is_file()), None)
    if suite is None:
        raise ValidationError(
            "sealvec bench needs the benchmarks/ folder of a source checkout; "
            "run it from the repository root"
        )
    sys.path.insert(0, str(suite.parent.parent))
    spec = importlib.util.spec_from_file_location("benchmarks.suite", suite)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.argv[0] = "sealvec bench"  # the usage line argparse prints
    sys.exit(module.main(list(suite_args)))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        command = f"sealvec {error.ctx.info_name} --help" if error.ctx else "sealvec --help"
        click.echo(f"error: {_one_line(error.format_message())} (see {command})", err=True)
        sys.exit(2)
    except click.ClickException as error:
        click.echo(f"error: {_one_line(error.format_message())}", err=True)
        sys.exit(error.exit_code)
    except SealvecError as error:
        message = _one_line(error).replace(
            "pass memory_lock='best_effort'", "use --memory-lock best_effort"
        )
        click.echo(f"error: {message}", err=True)
        sys.exit(_exit_code(error))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as error:
        click.echo(f"error: {_one_line(error)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
