"""The one storage layer: a location is a local path or a filesystem URI, and every command and
every Ray worker turns it into files the same way (`resolve`).

    /abs/path, rel/path, file:///abs/path   the local disk (or a shared filesystem mounted there)
    s3://bucket/prefix                      S3 or any S3-protocol server. Credentials, region and
                                            endpoint come from the usual AWS variables
                                            (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION,
                                            AWS_ENDPOINT_URL) or from pyarrow's URI options
                                            (`?endpoint_override=host:port&scheme=http&region=…`)
    gs://bucket/prefix                      Google Cloud Storage (pyarrow's GcsFileSystem)

A URI keeps its options when joined (`join_uri`), so a location handed to a Ray worker as a string
resolves there exactly as it did on the driver.

What commits need from storage, and what each backend gives:
  - `write_bytes_atomic`: a small object written whole or not at all (object stores: one PUT;
    local disks: a temporary file renamed over the target);
  - `write_if`: a conditional write (compare-and-swap on a small pointer object). S3: PutObject
    with If-None-Match / If-Match (through botocore: pyarrow does not expose them), after a probe
    that the server honours them; local disks: an flock on the folder around read-compare-replace.
    Anything else (gs:// through pyarrow, an S3 server that ignores the headers) has no
    `conditional_writes`: `write_if` then writes unconditionally and the last writer wins, which
    callers must say.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import threading
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pyarrow.fs as pafs

CHUNK = 4 << 20
LOCAL_CAS = "local folder lock (flock)"
S3_CAS = "S3 conditional writes (If-None-Match / If-Match)"


class WriteConflict(Exception):
    """A conditional write found the object not as expected: someone else wrote it first."""


def is_uri(location: str) -> bool:
    """True for `scheme://…` (file:// included), False for a plain local path."""
    return "://" in str(location)


def join_uri(location: str, *parts: str) -> str:
    """`location` with `parts` appended to its path, keeping a URI's scheme and options."""
    location = str(location)
    parts = tuple(p.strip("/") for p in parts if p and p.strip("/"))
    if not is_uri(location):
        return os.path.join(location, *parts)
    u = urlsplit(location)
    return urlunsplit(u._replace(path=posixpath.join(u.path.rstrip("/") or "/", *parts)))


def absolute(location: str) -> str:
    """A local path made absolute (Ray workers run in other folders); a URI as it is."""
    return str(location) if is_uri(location) else os.path.abspath(location)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Location:
    """A folder on some pyarrow filesystem: `fs` plus a path inside it, and the URI it came from.

    `local` says the path is a path of this machine's OS (local disks: folder locks work)."""

    fs: pafs.FileSystem
    path: str
    uri: str
    local: bool | None = None

    def __post_init__(self):
        if self.local is None:
            object.__setattr__(self, "local", isinstance(self.fs, pafs.LocalFileSystem))

    # ---- names ---------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        """The filesystem path of `parts` inside this location."""
        return posixpath.join(self.path, *[p for p in parts if p])

    def child(self, *parts: str) -> Location:
        """The location of a folder inside this one."""
        return Location(self.fs, self.join(*parts), join_uri(self.uri, *parts), self.local)

    def uri_of(self, *parts: str) -> str:
        """The URI (or local path) of `parts`, for handing to another process."""
        return join_uri(self.uri, *parts)

    # ---- reading -------------------------------------------------------------------------
    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self.join(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self.join(rel)).type == pafs.FileType.File

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.join(rel)) as f:
            return f.read()

    def sha256(self, rel: str) -> str:
        """sha256 of a file, streamed (files may be large)."""
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.join(rel)) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def list_files(self, rel: str = "") -> list[str]:
        """Every file below `rel`, as paths relative to this location, sorted."""
        base = self.join(rel)
        if self.fs.get_file_info(base).type == pafs.FileType.NotFound:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(posixpath.relpath(i.path, self.path) for i in infos if i.type == pafs.FileType.File)

    def list_dir(self, rel: str = "") -> dict[str, bool]:
        """The entries directly inside `rel`: name → True for a folder, False for a file."""
        base = self.join(rel)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return {}
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=False))
        return {
            posixpath.basename(i.path.rstrip("/")): i.type == pafs.FileType.Directory
            for i in infos
            if i.type != pafs.FileType.NotFound
        }

    def download(self, rel: str, local_dir: str) -> str:
        """Copy the folder `rel` into the local folder `local_dir` (created); returns `local_dir`."""
        os.makedirs(local_dir, exist_ok=True)
        pafs.copy_files(
            self.join(rel),
            local_dir,
            source_filesystem=self.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return local_dir

    # ---- writing -------------------------------------------------------------------------
    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        """Write `rel` whole or not at all: readers see the old object or the new one, never a part."""
        path = self.join(rel)
        if not self.local:  # one PUT of the whole body: atomic on object stores
            with self.fs.open_output_stream(path) as f:
                f.write(data)
            return
        parent = posixpath.dirname(path)
        self.fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)
        except BaseException:
            if self.fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                self.fs.delete_file(tmp)  # a failed write leaves nothing behind
            raise

    def upload(self, local_path: str, rel: str = "") -> None:
        """Copy a local file or folder to `rel` (files replaced, others left)."""
        if os.path.isdir(local_path):
            pafs.copy_files(
                local_path,
                self.join(rel),
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self.fs,
            )
        else:
            with open(local_path, "rb") as f:
                self.write_bytes_atomic(rel, f.read())

    def delete_file(self, rel: str) -> None:
        if self.fs.get_file_info(self.join(rel)).type == pafs.FileType.File:
            self.fs.delete_file(self.join(rel))

    def delete_dir(self, rel: str = "") -> bool:
        """Remove a folder and all it holds. False when there was none, also when another process
        removed it meanwhile (the state asked for is reached either way)."""
        p = self.join(rel)
        if self.fs.get_file_info(p).type == pafs.FileType.NotFound:
            return False
        try:
            self.fs.delete_dir(p)
        except FileNotFoundError:  # gone between the look and the removal
            return False
        return True

    # ---- compare-and-swap ----------------------------------------------------------------
    @property
    def conditional_writes(self) -> str | None:
        """How `write_if` is made conditional here, or None when it cannot be (last writer wins)."""
        if self.local:
            return LOCAL_CAS
        if self.fs.type_name == "s3":
            return S3_CAS if _s3_honours_conditions(self) else None
        return None

    def read_tagged(self, rel: str) -> tuple[bytes | None, str | None]:
        """(content, tag) of a small object, or (None, None) when absent; the tag is what `write_if`
        compares (S3: the ETag; elsewhere: the content's sha256)."""
        if not self.local and self.fs.type_name == "s3":
            return _S3(self).get(self.join(rel))
        if not self.is_file(rel):
            return None, None
        data = self.read_bytes(rel)
        return data, sha256_bytes(data)

    def write_if(self, rel: str, data: bytes, tag: str | None) -> None:
        """Write `rel` only if it still has `tag` (from `read_tagged`), or, with tag None, only if it
        does not exist; otherwise raise WriteConflict and change nothing. Without
        `conditional_writes` the write is unconditional."""
        how = self.conditional_writes
        if how == S3_CAS:
            _S3(self).put_if(self.join(rel), data, tag)
            return
        if how == LOCAL_CAS:
            parent = posixpath.dirname(self.join(rel))
            self.fs.create_dir(parent, recursive=True)
            with _folder_lock(parent):
                current, current_tag = self.read_tagged(rel)
                if (tag is None) != (current is None) or (tag is not None and tag != current_tag):
                    raise WriteConflict(f"{self.uri_of(rel)} changed since it was read")
                self.write_bytes_atomic(rel, data)
            return
        self.write_bytes_atomic(rel, data)


def write_json_atomic(location: str | os.PathLike, rel: str, obj) -> None:
    """Write `obj` as JSON to `rel` under `location` (a local path or URI) whole or not at all;
    what is not JSON (a date, a path) is written as its str()."""
    data = (json.dumps(obj, indent=2, default=str) + "\n").encode()
    resolve(location).write_bytes_atomic(rel, data)


def resolve(location: str | os.PathLike) -> Location:
    """Turn a local path or a filesystem URI into a Location (creating nothing)."""
    location = str(location)
    if is_uri(location):
        fs, path = pafs.FileSystem.from_uri(location)
    else:
        fs, path = pafs.LocalFileSystem(), os.path.abspath(location)
    return Location(fs=fs, path=path.rstrip("/") or "/", uri=location)


# ---------------------------------------------------------------------------------------------
# Local disks: an flock on the folder serialises conditional writers (threads and processes)


@contextlib.contextmanager
def _folder_lock(folder: str):
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases its flock


# ---------------------------------------------------------------------------------------------
# S3: the conditional PutObject that pyarrow does not expose, through botocore

_S3_CLIENTS: dict[tuple, object] = {}
_S3_PROBED: dict[tuple, bool] = {}
_S3_LOCK = threading.Lock()


class _S3:
    """botocore for one Location: the same endpoint, region and credentials pyarrow uses."""

    def __init__(self, loc: Location):
        opts = dict(parse_qsl(urlsplit(loc.uri).query)) if is_uri(loc.uri) else {}
        endpoint = opts.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{opts.get('scheme', 'https')}://{endpoint}"
        self.key = (
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            opts.get("region") or getattr(loc.fs, "region", None),
            opts.get("access_key"),
        )
        with _S3_LOCK:
            if self.key not in _S3_CLIENTS:
                import boto3
                from botocore.config import Config

                _S3_CLIENTS[self.key] = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.key[0],
                    region_name=self.key[1],
                    aws_access_key_id=opts.get("access_key"),
                    aws_secret_access_key=opts.get("secret_key"),
                    aws_session_token=opts.get("session_token"),
                    config=Config(retries={"max_attempts": 5, "mode": "standard"}),
                )
        self.client = _S3_CLIENTS[self.key]

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        bucket, _, key = path.partition("/")
        return bucket, key

    def get(self, path: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self.split(path)
        try:
            r = self.client.get_object(Bucket=bucket, Key=key)
            return r["Body"].read(), r["ETag"]
        except self.client.exceptions.NoSuchKey:
            return None, None
        except (BotoCoreError, ClientError) as e:  # unreachable, refused: an I/O error, as pyarrow's are
            raise OSError(f"s3://{path}: {e}") from e

    def put_if(self, path: str, data: bytes, tag: str | None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self.split(path)
        cond = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag}
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, **cond)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 412: the condition failed; 409: a concurrent conditional write is in flight;
            # 404 (If-Match on an object that is gone): it changed too
            if status in (409, 412) or code in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "NoSuchKey",
            ):
                raise WriteConflict(f"s3://{path} changed since it was read ({code})") from None
            raise OSError(f"s3://{path}: {e}") from e
        except BotoCoreError as e:
            raise OSError(f"s3://{path}: {e}") from e


def _s3_honours_conditions(loc: Location) -> bool:
    """Whether this S3 endpoint refuses a PutObject whose If-None-Match fails (once per process and
    bucket): an object written twice with If-None-Match: * must fail the second time."""
    s3 = _S3(loc)
    bucket = _S3.split(loc.path)[0]
    key = (*s3.key, bucket)
    with _S3_LOCK:
        known = _S3_PROBED.get(key)
    if known is not None:
        return known
    probe = loc.join(f".tunestack-cas-probe-{uuid.uuid4().hex[:12]}")
    s3.put_if(probe, b"probe", None)
    try:
        s3.put_if(probe, b"probe", None)
        honoured = False
    except WriteConflict:
        honoured = True
    finally:
        b, k = _S3.split(probe)
        try:
            s3.client.delete_object(Bucket=b, Key=k)
        except Exception:  # a probe object left behind is harmless; the answer stands
            pass
    with _S3_LOCK:
        _S3_PROBED[key] = honoured
    return honoured
