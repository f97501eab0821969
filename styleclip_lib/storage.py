"""Where edited images go when a client asks for a URL instead of inline bytes.

Three backends share one small interface (:class:`Storage`)::

    store = storage_from_env()                       # STYLECLIP_STORAGE=local|s3|oss
    key = store.put_bytes(png, suffix=".png", content_type="image/png")
    url = store.url(key, expires_in=3600)            # a time-limited GET URL

* :class:`LocalStorage` (the default): files in one folder.  ``url()`` returns
  ``{base_url}/{key}?expires=<unix time>&sig=<HMAC-SHA256>``; whoever serves the folder (the
  web service does, at ``GET /v1/files/{key}``) checks it with :meth:`LocalStorage.verify`.
  Keys are refused unless they are plain relative paths inside the folder (no ``..``, no
  absolute paths, no backslashes, no hidden or empty segments).
* :class:`S3Storage`: any S3-compatible store through ``boto3`` (AWS, MinIO, Ceph, Aliyun OSS'
  S3 endpoint, ...: give ``endpoint_url``); ``url()`` is a presigned ``GET``.
* :class:`OSSStorage`: Aliyun OSS through ``oss2`` (optional dependency); ``url()`` is a signed
  ``GET`` URL.

Configuration (:func:`storage_from_env`), all optional:

===============================  ==============================================================
``STYLECLIP_STORAGE``            ``local`` (default), ``s3`` or ``oss``
``STYLECLIP_STORAGE_DIR``        local: the folder (default ``$STYLECLIP_HOME/files`` or
                                 ``~/.cache/styleclip/files``)
``STYLECLIP_STORAGE_SECRET``     local: HMAC key for URL signatures (default: random per process,
                                 so URLs die with the process; set it to share across workers)
``STYLECLIP_STORAGE_BUCKET``     s3 / oss: bucket name (required)
``STYLECLIP_STORAGE_ENDPOINT``   s3: endpoint URL (MinIO, Aliyun ``https://oss-cn-hangzhou.aliyuncs.com``,
                                 ...; default AWS); oss: endpoint (required)
``STYLECLIP_STORAGE_REGION``     s3: region name
``STYLECLIP_STORAGE_PREFIX``     key prefix inside the bucket (e.g. ``styleclip/``)
``STYLECLIP_STORAGE_ACCESS_KEY_ID`` / ``STYLECLIP_STORAGE_SECRET_ACCESS_KEY`` / ``STYLECLIP_STORAGE_SESSION_TOKEN``
                                 credentials; when unset, s3 uses boto3's default chain
                                 (``AWS_ACCESS_KEY_ID``..., profiles, instance roles) and oss reads
                                 ``OSS_ACCESS_KEY_ID`` / ``OSS_ACCESS_KEY_SECRET``
``STYLECLIP_STORAGE_ADDRESSING`` s3: ``path`` or ``virtual`` addressing style (default: boto3's)
===============================  ==============================================================

Credentials are kept out of ``repr``/``str`` and out of every message raised here, and never
logged by this module.  Objects expire only if the store is told to: local files through
:meth:`LocalStorage.cleanup`; for S3/OSS configure a lifecycle rule on the bucket.

This module is part of the library: it imports no web framework.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import quote

__all__ = [
    "Storage",
    "LocalStorage",
    "S3Storage",
    "OSSStorage",
    "StorageError",
    "InvalidKeyError",
    "storage_from_env",
    "new_key",
    "validate_key",
]


class StorageError(RuntimeError):
    """A storage backend could not do what was asked (message free of credentials)."""


class InvalidKeyError(StorageError, ValueError):
    """A key that is not a safe relative object name (e.g. ``../etc/passwd``)."""


_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_MAX_KEY = 512


def validate_key(key: str) -> str:
    """``key`` if it is a safe relative name (``a/b/c.png``: segments of ``[A-Za-z0-9._-]``, not
    starting with ``.`` or ``-``), else :class:`InvalidKeyError`.  Refuses ``..``, absolute paths,
    backslashes, empty segments (``a//b``), NUL and other control characters."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError("storage key: expected a non-empty string")
    if len(key) > _MAX_KEY:
        raise InvalidKeyError(f"storage key: longer than {_MAX_KEY} characters")
    for seg in key.split("/"):
        if not _SEGMENT.match(seg):
            raise InvalidKeyError(
                f"storage key {key[:80]!r}: each '/'-separated part must match [A-Za-z0-9_][A-Za-z0-9._-]* "
                "(no '..', no absolute paths, no empty parts)")
    return key


def new_key(suffix: str = ".png", prefix: str = "results") -> str:
    """A fresh unguessable key such as ``results/2024-05-01/<32 hex digits>.png``."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    return validate_key(f"{prefix}/{day}/{secrets.token_hex(16)}{suffix}")


class Storage(ABC):
    """Object storage for results: put bytes under a key, hand out time-limited GET URLs."""

    kind: str = "abstract"

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        """Store ``data`` under ``key``; returns the key."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes stored under ``key`` (``KeyError`` when absent)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""

    @abstractmethod
    def url(self, key: str, expires_in: int = 3600) -> str:
        """A URL that GETs ``key`` for ``expires_in`` seconds."""

    def put_bytes(self, data: bytes, suffix: str = ".png", content_type: str = "image/png", prefix: str = "results") -> str:
        """Store ``data`` under a fresh key (see :func:`new_key`); returns the key."""
        return self.put(new_key(suffix, prefix), data, content_type)

    def describe(self) -> dict:
        """Non-secret facts about the backend (for logs and ``/v1/models``)."""
        return {"kind": self.kind}

    def __repr__(self) -> str:
        info = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "kind")
        return f"{type(self).__name__}({info})"

    __str__ = __repr__


def _check_expires_in(expires_in) -> int:
    try:
        v = int(expires_in)
    except (TypeError, ValueError):
        raise ValueError(f"expires_in: expected a number of seconds, got {expires_in!r}") from None
    if not 1 <= v <= 7 * 24 * 3600:
        raise ValueError(f"expires_in: expected 1 s to 7 days (604800 s), got {v}")
    return v


# --------------------------------------------------------------------------- local folder
class LocalStorage(Storage):
    """Files in ``root``; URLs are ``{base_url}/{key}?expires=..&sig=..`` signed with HMAC-SHA256.

    ``secret``: the signing key (bytes or str); random per instance when omitted, so URLs stop
    working when the process ends.  ``base_url``: URL prefix of the route that serves the folder
    (the web service's ``/v1/files``).
    """

    kind = "local"

    def __init__(self, root: str | os.PathLike, secret: bytes | str | None = None, base_url: str = "/v1/files"):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        if secret is None:
            secret = secrets.token_bytes(32)
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if len(secret) < 16:
            raise ValueError("LocalStorage: the signing secret must be at least 16 bytes")
        self._secret = bytes(secret)
        self.base_url = base_url.rstrip("/")

    def describe(self) -> dict:
        return {"kind": self.kind, "root": str(self.root), "base_url": self.base_url}

    def path(self, key: str) -> Path:
        """The file of ``key``, refusing anything that would leave ``root`` (symlinks included)."""
        validate_key(key)
        p = (self.root / key).resolve()
        if p != self.root and self.root not in p.parents:
            raise InvalidKeyError(f"storage key {key[:80]!r} points outside the storage folder")
        return p

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, p)
        return key

    def get(self, key: str) -> bytes:
        p = self.path(key)
        if not p.is_file():
            raise KeyError(key)
        return p.read_bytes()

    def delete(self, key: str) -> None:
        p = self.path(key)
        try:
            p.unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        try:
            return self.path(key).is_file()
        except InvalidKeyError:
            return False

    # ---- signatures
    def sign(self, key: str, expires: int) -> str:
        """Hex HMAC-SHA256 of ``key`` and the expiry time."""
        msg = f"{validate_key(key)}\n{int(expires)}".encode("utf-8")
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def url(self, key: str, expires_in: int = 3600, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + _check_expires_in(expires_in))
        return f"{self.base_url}/{quote(validate_key(key), safe='/')}?expires={expires}&sig={self.sign(key, expires)}"

    def verify(self, key: str, expires, sig, now: float | None = None) -> bool:
        """True when ``sig`` is this store's signature of (key, expires) and ``expires`` is in the future."""
        try:
            validate_key(key)
            exp = int(expires)
        except (InvalidKeyError, TypeError, ValueError):
            return False
        if not isinstance(sig, str) or exp < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self.sign(key, exp), sig)

    def cleanup(self, max_age_s: float, now: float | None = None) -> int:
        """Delete files older than ``max_age_s``; returns how many were removed."""
        cutoff = (time.time() if now is None else now) - max_age_s
        removed = 0
        for p in self.root.rglob("*"):
            try:
                if p.is_file() and p.stat().st_mtime < cutoff:
                    p.unlink()
                    removed += 1
            except OSError:
                continue
        return removed


# --------------------------------------------------------------------------- S3-compatible
class S3Storage(Storage):
    """An S3-compatible bucket through ``boto3`` (``endpoint_url`` for MinIO / Aliyun / Ceph...).

    Credentials given here (or ``None`` for boto3's default chain) go to the client only; they
    are not stored on this object and never appear in its ``repr``.
    """

    kind = "s3"

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 session_token: str | None = None, prefix: str = "", addressing_style: str | None = None,
                 client=None):
        if not bucket:
            raise ValueError("S3Storage: a bucket name is required (STYLECLIP_STORAGE_BUCKET)")
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.prefix = _check_prefix(prefix)
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise StorageError("the s3 storage backend needs boto3: pip install 'styleclip_lib[storage]' "
                                   "(or pip install boto3)") from None
            cfg = Config(signature_version="s3v4",
                         s3={"addressing_style": addressing_style} if addressing_style else None)
            client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key, aws_session_token=session_token, config=cfg)
        self._client = client

    def describe(self) -> dict:
        return {"kind": self.kind, "bucket": self.bucket, "endpoint_url": self.endpoint_url, "region": self.region,
                "prefix": self.prefix}

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def _fail(self, what: str, key: str, e: Exception) -> StorageError:
        code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
        return StorageError(f"s3 {what} of {key!r} in bucket {self.bucket!r} failed: "
                            f"{code or type(e).__name__}")

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=bytes(data), ContentType=content_type)
        except InvalidKeyError:
            raise
        except Exception as e:  # botocore errors; messages carry no secrets, but keep ours short anyway
            raise self._fail("upload", key, e) from None
        return key

    def get(self, key: str) -> bytes:
        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=self._name(key))
        except InvalidKeyError:
            raise
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
            if code in ("NoSuchKey", "404"):
                raise KeyError(key) from None
            raise self._fail("download", key, e) from None
        return obj["Body"].read()

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except InvalidKeyError:
            raise
        except Exception as e:
            raise self._fail("delete", key, e) from None

    def url(self, key: str, expires_in: int = 3600) -> str:
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._name(key)}, ExpiresIn=_check_expires_in(expires_in))


# --------------------------------------------------------------------------- Aliyun OSS
class OSSStorage(Storage):
    """An Aliyun OSS bucket through ``oss2`` (optional dependency: ``pip install oss2``)."""

    kind = "oss"

    def __init__(self, bucket: str, endpoint: str, *, access_key_id: str | None = None,
                 access_key_secret: str | None = None, security_token: str | None = None, prefix: str = "",
                 bucket_client=None):
        if not bucket or not endpoint:
            raise ValueError("OSSStorage: bucket and endpoint are required "
                             "(STYLECLIP_STORAGE_BUCKET, STYLECLIP_STORAGE_ENDPOINT)")
        self.bucket_name = bucket
        self.endpoint = endpoint
        self.prefix = _check_prefix(prefix)
        if bucket_client is None:
            try:
                import oss2
            except ImportError:
                raise StorageError("the oss storage backend needs oss2: pip install 'styleclip_lib[storage]' "
                                   "(or pip install oss2)") from None
            if not access_key_id or not access_key_secret:
                raise StorageError("the oss storage backend needs credentials: set STYLECLIP_STORAGE_ACCESS_KEY_ID and "
                                   "STYLECLIP_STORAGE_SECRET_ACCESS_KEY (or OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET)")
            auth = (oss2.StsAuth(access_key_id, access_key_secret, security_token) if security_token
                    else oss2.Auth(access_key_id, access_key_secret))
            bucket_client = oss2.Bucket(auth, endpoint, bucket)
        self._bucket = bucket_client

    def describe(self) -> dict:
        return {"kind": self.kind, "bucket": self.bucket_name, "endpoint": self.endpoint, "prefix": self.prefix}

    def _name(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        try:
            self._bucket.put_object(self._name(key), bytes(data), headers={"Content-Type": content_type})
        except InvalidKeyError:
            raise
        except Exception as e:
            raise StorageError(f"oss upload of {key!r} to bucket {self.bucket_name!r} failed: "
                               f"{getattr(e, 'code', None) or type(e).__name__}") from None
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._bucket.get_object(self._name(key)).read()
        except InvalidKeyError:
            raise
        except Exception as e:
            if getattr(e, "status", None) == 404:
                raise KeyError(key) from None
            raise StorageError(f"oss download of {key!r} from bucket {self.bucket_name!r} failed: "
                               f"{getattr(e, 'code', None) or type(e).__name__}") from None

    def delete(self, key: str) -> None:
        try:
            self._bucket.delete_object(self._name(key))
        except InvalidKeyError:
            raise
        except Exception as e:
            raise StorageError(f"oss delete of {key!r} failed: {getattr(e, 'code', None) or type(e).__name__}") from None

    def url(self, key: str, expires_in: int = 3600) -> str:
        return self._bucket.sign_url("GET", self._name(key), _check_expires_in(expires_in), slash_safe=True)


# --------------------------------------------------------------------------- configuration
def _check_prefix(prefix: str) -> str:
    prefix = (prefix or "").strip("/")
    if not prefix:
        return ""
    validate_key(prefix)
    return prefix + "/"


def _default_dir(env: Mapping[str, str]) -> Path:
    home = env.get("STYLECLIP_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "styleclip") / "files"


def storage_from_env(env: Optional[Mapping[str, str]] = None, *, base_url: str = "/v1/files") -> Storage:
    """The backend configured by the ``STYLECLIP_STORAGE*`` variables (see the module docstring)."""
    env = os.environ if env is None else env
    kind = (env.get("STYLECLIP_STORAGE") or "local").strip().lower()

    def get(name: str, *fallbacks: str) -> str | None:
        for n in (name, *fallbacks):
            v = env.get(n)
            if v:
                return v
        return None

    if kind == "local":
        return LocalStorage(get("STYLECLIP_STORAGE_DIR") or _default_dir(env), secret=get("STYLECLIP_STORAGE_SECRET"),
                            base_url=base_url)
    if kind == "s3":
        return S3Storage(
            get("STYLECLIP_STORAGE_BUCKET") or "", endpoint_url=get("STYLECLIP_STORAGE_ENDPOINT"),
            region=get("STYLECLIP_STORAGE_REGION"), access_key_id=get("STYLECLIP_STORAGE_ACCESS_KEY_ID"),
            secret_access_key=get("STYLECLIP_STORAGE_SECRET_ACCESS_KEY"),
            session_token=get("STYLECLIP_STORAGE_SESSION_TOKEN"), prefix=get("STYLECLIP_STORAGE_PREFIX") or "",
            addressing_style=get("STYLECLIP_STORAGE_ADDRESSING"))
    if kind == "oss":
        return OSSStorage(
            get("STYLECLIP_STORAGE_BUCKET") or "", get("STYLECLIP_STORAGE_ENDPOINT") or "",
            access_key_id=get("STYLECLIP_STORAGE_ACCESS_KEY_ID", "OSS_ACCESS_KEY_ID"),
            access_key_secret=get("STYLECLIP_STORAGE_SECRET_ACCESS_KEY", "OSS_ACCESS_KEY_SECRET"),
            security_token=get("STYLECLIP_STORAGE_SESSION_TOKEN", "OSS_SESSION_TOKEN"),
            prefix=get("STYLECLIP_STORAGE_PREFIX") or "")
    raise ValueError(f"STYLECLIP_STORAGE: expected 'local', 's3' or 'oss', got {kind!r}")
