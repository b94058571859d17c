"""The command line, run as a real process, on the real corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CORPUS_DIR

JSONL = CORPUS_DIR / "stdlib-docs.jsonl"
VECTORS = CORPUS_DIR / "stdlib-docs.minilm.npy"


def sealvec(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-m", "sealvec", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cli")
    store = root / "store"
    os.environ["SEALVEC_KEYRING"] = str(root / "keyring.json")
    os.environ["SEALVEC_STATE_DIR"] = str(root / "state")
    result = sealvec(
        "ingest", str(store), str(JSONL), "--vectors", str(VECTORS),
        "--model", "local:all-MiniLM-L6-v2", "--json",
    )
    return store, json.loads(result.stdout)


@pytest.fixture(autouse=True)
def _module_keyring(ingested, monkeypatch):
    monkeypatch.setenv("SEALVEC_KEYRING", str(ingested[0].parent / "keyring.json"))


def test_ingest_stats_and_rerun_skips(ingested):
    store, report = ingested
    assert report["added"] == 3390 and report["records"] == 3390
    again = json.loads(
        sealvec("ingest", str(store), str(JSONL), "--vectors", str(VECTORS), "--json").stdout
    )
    assert again["added"] == 0 and again["skipped"] == 3390
    stats = json.loads(sealvec("stats", str(store), "--json").stdout)
    assert stats["records"] == 3390 and stats["dimension"] == 384


def test_query_by_vector_matches_exact_search(ingested, tmp_path):
    store, _ = ingested
    vectors = np.load(VECTORS)
    records = [json.loads(line) for line in JSONL.read_text().splitlines()]
    query = vectors[123]
    np.save(tmp_path / "q.npy", query)
    hits = json.loads(
        sealvec("query", str(store), "--vector", str(tmp_path / "q.npy"), "-k", "10", "--json").stdout
    )[0]
    scores = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    order = sorted(range(len(records)), key=lambda i: (-scores[i], records[i]["id"].encode()))
    assert [h["id"] for h in hits] == [records[i]["id"] for i in order[:10]]
    assert hits[0]["metadata"]["module"] == records[123]["module"]


def test_query_by_text_with_the_local_embedder(ingested):
    pytest.importorskip("sentence_transformers")
    store, _ = ingested
    hits = json.loads(
        sealvec("query", str(store), "read rows from a comma separated values file", "-k", "5", "--json").stdout
    )[0]
    assert "csv" in [h["metadata"]["module"] for h in hits]


def test_verify_passes_and_prints_no_plaintext(ingested):
    store, _ = ingested
    result = sealvec("verify", str(store), "--json")
    report = json.loads(result.stdout)
    assert report["shards_checked"] == 7 and report["rows"] == 3390
    assert "csv" not in result.stdout + result.stderr


def test_errors_are_one_line_with_meaningful_exit_codes(ingested, tmp_path):
    store, _ = ingested
    missing = sealvec("stats", str(tmp_path / "nope"), check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no collection" in missing.stderr and "Traceback" not in missing.stderr

    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones(384, dtype=np.float64))
    wrong = sealvec("query", str(store), "--vector", str(bad), check=False)
    assert wrong.returncode == 2 and "float32" in wrong.stderr and "Traceback" not in wrong.stderr

    copy = tmp_path / "tampered"
    subprocess.run(["cp", "-r", str(store), str(copy)], check=True)
    shard = sorted((copy / "shards").iterdir())[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    tampered = sealvec("verify", str(copy), check=False)
    assert tampered.returncode == 3 and "failed authentication" in tampered.stderr
    assert tampered.stderr.count("\n") == 1

    other_keyring = sealvec("--keyring", str(tmp_path / "none.json"), "stats", str(store), check=False)
    assert other_keyring.returncode == 4 and "does not exist" in other_keyring.stderr


def test_init_then_ingest_dimension_mismatch(tmp_path):
    store = tmp_path / "s"
    sealvec("init", str(store), "--dim", "8")
    result = sealvec("ingest", str(store), str(JSONL), "--vectors", str(VECTORS), check=False)
    assert result.returncode == 2 and "dimension 8" in result.stderr


def test_lifecycle_commands_with_json(tmp_path):
    store = tmp_path / "life"
    sealvec(
        "ingest", str(store), str(JSONL), "--vectors", str(VECTORS),
        "--model", "local:all-MiniLM-L6-v2", "--batch-size", "1000",
    )
    deleted = json.loads(sealvec("delete", str(store), "csv.Dialect", "missing.id", "--json").stdout)
    assert deleted["deleted"] == 1
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("csv.Sniffer\ncsv.excel_tab\n")
    forgotten = json.loads(sealvec("forget", str(store), "--ids-file", str(ids_file), "--json").stdout)
    assert forgotten["forgotten"] == 2
    compacted = json.loads(sealvec("compact", str(store), "--json").stdout)
    # forget already rewrote the shard holding the deleted row, without it.
    assert compacted["shards_after"] == 1 and compacted["rows_dropped"] == 0
    rotated = json.loads(sealvec("rotate-key", str(store), "--collection-key", "--json").stdout)
    assert rotated["previous_key_id"] == "local:default/1" and rotated["key_id"] == "local:default/2"
    stats = json.loads(sealvec("stats", str(store), "--json").stdout)
    assert stats["records"] == 3387 and stats["key_id"] == "local:default/2"
    vectors = np.load(VECTORS)
    np.save(tmp_path / "q.npy", vectors[0])
    filtered = json.loads(
        sealvec("query", str(store), "--vector", str(tmp_path / "q.npy"), "-k", "3",
                "--where", '{"module": "json"}', "--json").stdout
    )[0]
    assert len(filtered) == 3 and {h["metadata"]["module"] for h in filtered} == {"json"}
    bad = sealvec("query", str(store), "--vector", str(tmp_path / "q.npy"), "--where", "[1]", check=False)
    assert bad.returncode == 2 and "JSON object" in bad.stderr
    sealvec("verify", str(store))


def test_config_file_names_the_store(tmp_path):
    store = tmp_path / "configured"
    config = tmp_path / "config.toml"
    config.write_text(f'[sealvec]\nstore = "{store}"\nkey = "local:cfg"\n')
    sealvec("--config", str(config), "init", "--dim", "4")
    stats = json.loads(sealvec("--config", str(config), "stats", "--json").stdout)
    assert stats["key_id"] == "local:cfg/1" and stats["location"] == str(store)
    bad = tmp_path / "bad.toml"
    bad.write_text('[sealvec]\nunknown_setting = 1\n')
    result = sealvec("--config", str(bad), "stats", check=False)
    assert result.returncode == 2 and "unknown setting" in result.stderr


def test_query_watch_picks_up_new_generations(tmp_path):
    store = tmp_path / "watched"
    sealvec("init", str(store), "--dim", "4", "--metric", "ip")
    np.save(tmp_path / "q.npy", np.ones(4, dtype=np.float32))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "sealvec", "query", str(store), "--vector",
         str(tmp_path / "q.npy"), "--watch", "0.1", "--json", "-k", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        import sealvec as library

        with library.Collection.open(store) as collection:
            collection.add(["x"], np.ones((1, 4), dtype=np.float32))
        deadline = __import__("time").monotonic() + 60
        seen = ""
        while '"x"' not in seen and __import__("time").monotonic() < deadline:
            seen += watcher.stdout.readline()
        assert '"x"' in seen
    finally:
        watcher.kill()
        watcher.wait()


def test_bad_ingest_input_is_refused_before_anything_is_committed(tmp_path):
    store = tmp_path / "strict"
    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps({"id": f"r{i}", "text": f"t{i}"}) + "\n" for i in range(4)))
    good = tmp_path / "good.npy"
    np.save(good, np.ones((4, 3), dtype=np.float32))
    nan = tmp_path / "nan.npy"
    bad_vectors = np.ones((4, 3), dtype=np.float32)
    bad_vectors[2, 1] = np.nan
    np.save(nan, bad_vectors)
    (tmp_path / "text.npy").write_text("not an array")
    (tmp_path / "bin.jsonl").write_bytes(b'\xff\xfe{"id": 1}\n')
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "nested.jsonl").write_text('{"id": "q", "text": "x", "m": {"a": 1}}\n')
    (tmp_path / "dupes.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n')
    one = tmp_path / "one.npy"
    np.save(one, np.ones((1, 3), dtype=np.float32))
    two = tmp_path / "two.npy"
    np.save(two, np.ones((2, 3), dtype=np.float32))

    cases = [
        (["ingest", str(store), str(records), "--vectors", str(nan), "--batch-size", "1"], "row 2 contains NaN"),
        (["ingest", str(store), str(records), "--vectors", str(tmp_path / "text.npy")], "not a readable .npy"),
        (["ingest", str(store), str(records), "--vectors", str(one)], "one row per record"),
        (["ingest", str(store), str(tmp_path / "bin.jsonl"), "--vectors", str(one)], "not UTF-8"),
        (["ingest", str(store), str(tmp_path / "blank.jsonl"), "--vectors", str(one)], "holds no records"),
        (["ingest", str(store), str(tmp_path / "nested.jsonl"), "--vectors", str(one)], "not a scalar"),
        (["ingest", str(store), str(tmp_path / "dupes.jsonl"), "--vectors", str(two)], "repeats the id of line 1"),
        (["query", str(store)], "give a query TEXT or --vector"),
        (["query", str(store), "--vector", str(tmp_path / "text.npy")], "not a readable .npy"),
        (["init", str(store), "--dim", "0"], "see sealvec init --help"),
    ]
    sealvec("init", str(store), "--dim", "3")
    for args, message in cases:
        result = sealvec(*args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
    assert json.loads(sealvec("stats", str(store), "--json").stdout)["records"] == 0

    mismatch = sealvec("ingest", str(store), str(records), "--vectors", str(good), "--metric", "l2", check=False)
    assert mismatch.returncode == 2 and "does not match the collection's metric" in mismatch.stderr
    sealvec("ingest", str(store), str(records), "--vectors", str(good))
    assert json.loads(sealvec("stats", str(store), "--json").stdout)["records"] == 4


def test_keyring_commands_and_shared_key_warning(tmp_path):
    keyring = tmp_path / "kr.json"
    first, second = tmp_path / "a", tmp_path / "b"
    sealvec("--keyring", str(keyring), "init", str(first), "--dim", "4")
    sealvec("--keyring", str(keyring), "init", str(second), "--dim", "4")
    rotated = sealvec("--keyring", str(keyring), "rotate-key", str(first)).stdout
    assert "Other collections" in " ".join(rotated.split())
    listing = json.loads(sealvec("--keyring", str(keyring), "keyring", "list", "--json").stdout)
    assert listing == {"default": {"current": 2, "versions": [1, 2]}}
    assert "AAAA" not in json.dumps(listing)
    sealvec("--keyring", str(keyring), "rotate-key", str(second), "--no-new-kek-version")
    sealvec("--keyring", str(keyring), "keyring", "remove-version", "local:default/1", "--yes")
    for store in (first, second):
        stats = json.loads(sealvec("--keyring", str(keyring), "stats", str(store), "--json").stdout)
        assert stats["key_id"] == "local:default/2"
    refused = sealvec("--keyring", str(keyring), "keyring", "remove-version", "local:default/2",
                      "--yes", check=False)
    assert refused.returncode == 2 and "current version" in refused.stderr


def test_stats_and_verify_remember_the_generation_and_check_shards(tmp_path):
    store = tmp_path / "remembered"
    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps({"id": f"r{i}", "text": "t"}) + "\n" for i in range(4)))
    np.save(tmp_path / "v.npy", np.ones((4, 3), dtype=np.float32))
    sealvec("ingest", str(store), str(records), "--vectors", str(tmp_path / "v.npy"), "--batch-size", "2")
    sealvec("stats", str(store))  # records the newest generation
    link = tmp_path / "link"
    link.symlink_to(store)
    shard = sorted((store / "shards").iterdir())[0]
    data = shard.read_bytes()
    shard.unlink()
    for command in ("stats", "verify"):
        result = sealvec(command, str(store), check=False)
        assert result.returncode == 3 and "missing" in result.stderr, result.stderr
    shard.write_bytes(data)
    newest = sorted((store / "manifest").iterdir())[-1]
    newest.unlink()
    for command in ("stats", "verify"):
        for location in (store, link):
            result = sealvec(command, str(location), check=False)
            assert result.returncode == 3 and "rollback refused" in result.stderr, result.stderr


def test_index_build_and_approximate_query(ingested, tmp_path):
    import shutil

    store = tmp_path / "copy"
    shutil.copytree(ingested[0], store)
    vectors = np.load(VECTORS)
    np.save(tmp_path / "q.npy", vectors[321])
    built = json.loads(sealvec("index", str(store), "--kind", "hnsw", "--m", "16", "--json").stdout)
    assert built["kind"] == "hnsw" and built["rows"] == 3390 and built["params"]["m"] == 16
    sealvec("index", str(store), "--kind", "ivf", "--nlist", "32")
    exact = json.loads(
        sealvec("query", str(store), "--vector", str(tmp_path / "q.npy"), "-k", "5", "--json").stdout
    )[0]
    for backend, knob in (("hnsw", ["--ef-search", "200"]), ("ivf", ["--nprobe", "32"])):
        hits = json.loads(
            sealvec(
                "query", str(store), "--vector", str(tmp_path / "q.npy"), "-k", "5",
                "--backend", backend, *knob, "--json",
            ).stdout
        )[0]
        assert hits == exact  # the same ids, scored exactly
    hits = json.loads(
        sealvec(
            "query", str(store), "--vector", str(tmp_path / "q.npy"), "-k", "5",
            "--backend", "bf16", "--candidates", "50", "--json",
        ).stdout
    )[0]
    assert hits == exact
    stats = json.loads(sealvec("stats", str(store), "--json").stdout)
    assert sorted(i["kind"] for i in stats["indexes"]) == ["hnsw", "ivf"]
    verified = json.loads(sealvec("verify", str(store), "--json").stdout)
    assert verified["indexes_checked"] == 2
    wrong = sealvec("index", str(store), "--kind", "hnsw", "--nlist", "4", check=False)
    assert wrong.returncode == 2 and "do not apply" in wrong.stderr
    wrong = sealvec(
        "query", str(store), "--vector", str(tmp_path / "q.npy"), "--nprobe", "3", check=False
    )
    assert wrong.returncode == 2 and "nprobe" in wrong.stderr
    for flags in (["-k", "99999999999999999999"], ["--backend", "bf16", "--candidates", str(2**63)]):
        wrong = sealvec("query", str(store), "--vector", str(tmp_path / "q.npy"), *flags, check=False)
        assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
        assert len(wrong.stderr.strip().splitlines()) <= 3  # usage lines, no arrays
