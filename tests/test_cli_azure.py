"""The command line against Azure Blob Storage (Azurite over TLS), configured the way
a user would: a blob URL as the store, the connection string and CA from the
environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
from conftest import CORPUS_DIR

JSONL = CORPUS_DIR / "stdlib-docs.jsonl"
VECTORS = CORPUS_DIR / "stdlib-docs.minilm.npy"


def run(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "sealvec", *args],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}: {result.stderr}")
    return result


def test_ingest_query_verify_on_a_blob_url(azurite, tmp_path):
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
        "SEALVEC_CA_FILE": str(azurite.ca),
        "SEALVEC_STORAGE_API_VERSION": azurite.api_version,
    }
    store = azurite.url(f"c{uuid.uuid4().hex[:12]}", "tenants/acme")
    report = json.loads(
        run("ingest", store, str(JSONL), "--vectors", str(VECTORS), "--batch-size", "1500",
            "--json", env=env).stdout
    )
    assert report["records"] == 3390 and report["shards"] == 3
    vectors = np.load(VECTORS)
    np.save(tmp_path / "q.npy", vectors[42])
    hits = json.loads(
        run("query", store, "--vector", str(tmp_path / "q.npy"), "-k", "3", "--json", env=env).stdout
    )[0]
    records = [json.loads(line) for line in JSONL.read_text().splitlines()]
    assert hits[0]["id"] == records[42]["id"]
    assert json.loads(run("verify", store, "--json", env=env).stdout)["rows"] == 3390

    # TLS is verified: without the test CA the emulator's certificate is refused.
    no_ca = run("stats", store, env={**env, "SEALVEC_CA_FILE": ""}, check=False)
    assert no_ca.returncode != 0 and "Traceback" not in no_ca.stderr
    assert no_ca.stderr.count("\n") == 1


def test_plain_http_to_a_remote_host_is_refused(tmp_path):
    result = run("stats", "http://example.invalid/container/prefix",
                 env={"AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=AAAA;BlobEndpoint=http://example.invalid/a"},
                 check=False)
    assert result.returncode == 2 and "http" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_ingest_and_text_query_through_azure_openai(tmp_path):
    from openai_standin import OpenAIStandIn
    from tls import make_tls

    tls = make_tls(tmp_path / "tls")
    with OpenAIStandIn(tls, dimension=64, max_inputs=100) as standin:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[sealvec]\nembedder = "azure-openai"\nca_file = "{tls.ca}"\n\n'
            f'[azure_openai]\nendpoint = "{standin.url}"\ndeployment = "embed-deploy"\n'
            f'api_version = "2024-10-21"\ndimension = 64\nmax_inputs_per_request = 100\n'
        )
        records = tmp_path / "records.jsonl"
        records.write_text("".join(
            json.dumps({"id": f"r{i}", "text": f"record number {i}", "tenant": f"t{i % 2}"}) + "\n"
            for i in range(250)
        ))
        env = {"AZURE_OPENAI_API_KEY": standin.api_key}
        store = tmp_path / "store"
        report = json.loads(run("--config", str(config), "ingest", str(store), str(records),
                                "--batch-size", "100", "--json", env=env).stdout)
        assert report["added"] == 250 and report["model"] == "azure-openai:embed-deploy"
        assert standin.request_count == 3
        hits = json.loads(run("--config", str(config), "query", str(store), "record number 7",
                              "-k", "1", "--where", '{"tenant": "t1"}', "--json", env=env).stdout)[0]
        assert hits[0]["id"] == "r7"
