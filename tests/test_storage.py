"""Result storage: local folder with HMAC-signed expiring URLs, S3 (moto server on 127.0.0.1), OSS URL signing."""
from __future__ import annotations

import logging
import os
import urllib.request

import pytest

from styleclip_lib.storage import (InvalidKeyError, LocalStorage, OSSStorage, S3Storage, new_key, storage_from_env,
                                   validate_key)

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY-do-not-log"
AKID = "AKIDTESTSTYLECLIP"


# ----------------------------------------------------------------------------- keys
@pytest.mark.parametrize("key", [
    "../etc/passwd", "a/../../b", "/etc/passwd", "a\\b", "..", ".", "", "a//b", "a/", ".hidden", "a/.git/config",
    "a\x00b", "a\nb", "C:\\x", "-rf", "a/./b", "x" * 600, "é.png",
])
def test_traversal_and_odd_keys_are_refused(tmp_path, key):
    store = LocalStorage(tmp_path / "files")
    with pytest.raises(InvalidKeyError):
        validate_key(key)
    with pytest.raises(InvalidKeyError):
        store.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.path(key)
    assert not store.verify(key, 2 ** 40, store.sign("ok.png", 2 ** 40))
    assert not list((tmp_path).glob("etc*"))


def test_new_key_is_safe_and_unique():
    keys = {new_key() for _ in range(2000)}
    assert len(keys) == 2000
    for k in keys:
        assert validate_key(k) == k and k.startswith("results/") and k.endswith(".png")


# ----------------------------------------------------------------------------- local backend
def test_local_put_get_delete(tmp_path):
    store = LocalStorage(tmp_path / "files", secret="0123456789abcdef-secret")
    key = store.put_bytes(b"\x89PNG data")
    assert store.get(key) == b"\x89PNG data" and store.exists(key)
    assert store.path(key).parent.parent.parent == store.root
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(KeyError):
        store.get(key)
    store.delete(key)  # idempotent


def test_local_url_signing_expiry_and_tampering(tmp_path):
    store = LocalStorage(tmp_path / "files", secret="0123456789abcdef-secret", base_url="/v1/files")
    key = store.put("results/a.png", b"png")
    url = store.url(key, expires_in=60, now=1_000_000)
    path, query = url.split("?")
    assert path == "/v1/files/results/a.png"
    q = dict(p.split("=") for p in query.split("&"))
    assert q["expires"] == str(1_000_060) and len(q["sig"]) == 64
    assert store.verify(key, q["expires"], q["sig"], now=1_000_030)
    assert not store.verify(key, q["expires"], q["sig"], now=1_000_061)           # expired
    assert not store.verify(key, str(1_000_999), q["sig"], now=1_000_030)         # extended expiry
    assert not store.verify("results/b.png", q["expires"], q["sig"], now=1_000_030)  # another key
    bad = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
    assert not store.verify(key, q["expires"], bad, now=1_000_030)                # tampered
    assert not store.verify(key, "soon", q["sig"], now=1_000_030)
    assert not store.verify(key, q["expires"], None, now=1_000_030)
    # another secret (another server, or a restart without STYLECLIP_STORAGE_SECRET) rejects it
    other = LocalStorage(tmp_path / "files", secret="another-secret-0123456789")
    assert not other.verify(key, q["expires"], q["sig"], now=1_000_030)
    with pytest.raises(ValueError):
        store.url(key, expires_in=0)


def test_local_refuses_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")
    store = LocalStorage(tmp_path / "files")
    os.symlink(outside, store.root / "link")
    with pytest.raises(InvalidKeyError):
        store.get("link/secret.txt")


def test_local_cleanup(tmp_path):
    store = LocalStorage(tmp_path / "files")
    old, new = store.put("results/old.png", b"1"), store.put("results/new.png", b"2")
    os.utime(store.path(old), (1_000, 1_000))
    assert store.cleanup(max_age_s=3600) == 1
    assert not store.exists(old) and store.exists(new)


def test_local_secret_not_in_repr(tmp_path):
    store = LocalStorage(tmp_path / "files", secret=SECRET)
    assert SECRET not in repr(store) and SECRET not in str(store) and "kind" not in repr(store)
    assert SECRET not in str(store.describe())
    with pytest.raises(ValueError):
        LocalStorage(tmp_path / "f2", secret="short")


def test_storage_from_env_local(tmp_path):
    store = storage_from_env({"STYLECLIP_STORAGE_DIR": str(tmp_path / "d"), "STYLECLIP_STORAGE_SECRET": SECRET})
    assert isinstance(store, LocalStorage) and store.root == (tmp_path / "d").resolve()
    url = store.url("results/x.png", 10)
    again = storage_from_env({"STYLECLIP_STORAGE_DIR": str(tmp_path / "d"), "STYLECLIP_STORAGE_SECRET": SECRET})
    q = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert again.verify("results/x.png", q["expires"], q["sig"])  # a shared secret works across processes
    with pytest.raises(ValueError, match="STYLECLIP_STORAGE"):
        storage_from_env({"STYLECLIP_STORAGE": "ftp"})
    with pytest.raises(ValueError, match="bucket"):
        storage_from_env({"STYLECLIP_STORAGE": "s3"})


# ----------------------------------------------------------------------------- S3 (moto server)
@pytest.fixture(scope="module")
def moto_endpoint():
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _s3_env(endpoint, bucket):
    return {"STYLECLIP_STORAGE": "s3", "STYLECLIP_STORAGE_BUCKET": bucket, "STYLECLIP_STORAGE_ENDPOINT": endpoint,
            "STYLECLIP_STORAGE_REGION": "us-east-1", "STYLECLIP_STORAGE_ACCESS_KEY_ID": AKID,
            "STYLECLIP_STORAGE_SECRET_ACCESS_KEY": SECRET, "STYLECLIP_STORAGE_PREFIX": "styleclip",
            "STYLECLIP_STORAGE_ADDRESSING": "path"}


def test_s3_put_presigned_get(moto_endpoint, caplog, monkeypatch):
    import boto3

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id=AKID,
                 aws_secret_access_key=SECRET).create_bucket(Bucket="results")
    caplog.set_level(logging.DEBUG)
    store = storage_from_env(_s3_env(moto_endpoint, "results"))
    assert isinstance(store, S3Storage)
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(500)
    key = store.put_bytes(data)
    url = store.url(key, expires_in=120)
    assert url.startswith(moto_endpoint + "/results/styleclip/results/") and "Signature" in url
    with urllib.request.urlopen(url, timeout=10) as r:  # a plain GET, as a browser would
        assert r.read() == data
    assert store.get(key) == data
    store.delete(key)
    with pytest.raises(KeyError):
        store.get(key)
    # credentials never in repr / str / describe / URLs / logs
    assert "botocore" in caplog.text  # the debug log was captured (and must hold no secret)
    for text in (repr(store), str(store), str(store.describe()), url, caplog.text):
        assert SECRET not in text
    assert AKID not in repr(store)


def test_s3_errors_name_no_secret(moto_endpoint):
    from styleclip_lib.storage import StorageError

    store = S3Storage("no-such-bucket", endpoint_url=moto_endpoint, region="us-east-1", access_key_id=AKID,
                      secret_access_key=SECRET)
    with pytest.raises(StorageError) as e:
        store.put("results/a.png", b"x")
    assert SECRET not in str(e.value) and "no-such-bucket" in str(e.value)
    with pytest.raises(InvalidKeyError):
        store.put("../a.png", b"x")


# ----------------------------------------------------------------------------- Aliyun OSS (signing only, offline)
def test_oss_signed_url_offline():
    pytest.importorskip("oss2")
    store = OSSStorage("my-bucket", "http://127.0.0.1:9", access_key_id=AKID, access_key_secret=SECRET,
                       prefix="styleclip")
    url = store.url("results/a.png", expires_in=300)
    assert "/styleclip/results/a.png" in url and "Signature=" in url and "Expires=" in url
    for text in (url, repr(store), str(store.describe())):
        assert SECRET not in text
    with pytest.raises(InvalidKeyError):
        store.url("../x", 10)


def test_oss_requires_credentials():
    pytest.importorskip("oss2")
    from styleclip_lib.storage import StorageError

    with pytest.raises(StorageError, match="credentials"):
        storage_from_env({"STYLECLIP_STORAGE": "oss", "STYLECLIP_STORAGE_BUCKET": "b",
                          "STYLECLIP_STORAGE_ENDPOINT": "http://127.0.0.1:9"})
