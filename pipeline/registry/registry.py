"""The one place that knows the registry layout. The registry lives on any storage location
(pipeline.storage: a local folder, `s3://…`, `gs://…`) and never renames anything:

    REGISTRY/<family>/
      v0001/checkpoint/…     the checkpoint's safetensors + JSON files, copied in
      v0001/version.json     the version's record; the version exists once this object is complete
      v0002/ …
      production.json        {"version": "v0002", "history": ["v0001", "v0002"]}: the production pointer

`version.json` holds the model definition (resolved config), metrics, where the checkpoint came
from, creation time and the sha256 of every file. Registering claims the next number by creating
`vNNNN/version.json` only if absent (a placeholder without "files"), writes the files under that
fresh prefix, then replaces the placeholder with the complete record: one small object makes the
version visible. Promotion and rollback replace `production.json` by compare-and-swap: the pointer
is written only if nobody changed it since it was read, so of two concurrent promotions exactly
one wins and the other fails with `RegistryConflict`. That needs conditional writes (local disks:
a folder lock; S3: If-None-Match / If-Match); where the storage has none, `conditional_writes` is
None, the last writer wins, and `tunestack models` says so. Promotion refuses a version whose
files do not match their checksums, and loading (`read_files`) checks every file again, so a
corrupted or half-copied model never reaches production.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
from pathlib import Path

from pipeline.errors import UserError
from pipeline.home import registry_dir
from pipeline.storage import Location, WriteConflict, resolve, sha256_bytes

ALLOWED_SUFFIXES = (".safetensors", ".json")
POINTER = "production.json"
RECORD = "version.json"
_VERSION = re.compile(r"^v\d{4,}$")
_FAMILY = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class RegistryError(UserError):
    """A registry operation that cannot be done: unknown version, bad checksum, nothing to roll back."""


class RegistryConflict(RegistryError):
    """Another writer changed the production pointer between this one reading and writing it."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json(obj) -> bytes:
    return json.dumps(obj, indent=2).encode()


class Registry:
    def __init__(self, root: str | os.PathLike | Location | None = None):
        self.loc: Location = root if isinstance(root, Location) else resolve(root or registry_dir())
        # its folder on a local disk (a Path, as before), else its URI
        self.root = Path(self.loc.path) if self.loc.local else self.loc.uri

    @property
    def conditional_writes(self) -> str | None:
        """How promotions are made compare-and-swap here; None: the last writer wins."""
        return self.loc.conditional_writes

    # ---- layout ----------------------------------------------------------------------------
    def _family(self, family: str) -> str:
        if not _FAMILY.match(family or ""):
            raise RegistryError(f"bad family name {family!r}")
        return family

    def _version(self, family: str, version: str) -> str:
        if not _VERSION.match(version or ""):
            raise RegistryError(f"bad version {version!r} (expected v0001, v0002, …)")
        return f"{self._family(family)}/{version}"

    def version_uri(self, family: str, version: str) -> str:
        return self.loc.uri_of(self._version(family, version))

    # ---- reading ---------------------------------------------------------------------------
    def families(self) -> list[str]:
        return sorted(n for n, is_dir in self.loc.list_dir().items() if is_dir and _FAMILY.match(n))

    def _pointer_tagged(self, family: str) -> tuple[dict, str | None]:
        rel = f"{self._family(family)}/{POINTER}"
        try:
            data, tag = self.loc.read_tagged(rel)
        except OSError as e:
            raise RegistryError(f"{self.loc.uri_of(rel)}: production pointer unreadable ({e})") from e
        if data is None:
            return {"version": None, "history": []}, None
        try:
            ptr = json.loads(data)
        except ValueError as e:
            raise RegistryError(f"{self.loc.uri_of(rel)}: production pointer unreadable ({e})") from e
        if not isinstance(ptr, dict) or not isinstance(ptr.get("history"), list) or "version" not in ptr:
            raise RegistryError(
                f"{self.loc.uri_of(rel)}: production pointer lacks 'version' and a 'history' list"
            )
        return ptr, tag

    def pointer(self, family: str) -> dict:
        return self._pointer_tagged(family)[0]

    def _numbers(self, family: str) -> list[str]:
        """Every vNNNN prefix of the family, complete or not (what the next number must avoid)."""
        return sorted(
            n for n, is_dir in self.loc.list_dir(self._family(family)).items() if is_dir and _VERSION.match(n)
        )

    def _record(self, family: str, version: str) -> dict | None:
        """The complete record of a version, or None (no such version, or still being written)."""
        rel = f"{self._version(family, version)}/{RECORD}"
        try:
            rec = json.loads(self.loc.read_bytes(rel))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RegistryError(f"{family} {version}: {RECORD} unreadable ({e})") from e
        return rec if isinstance(rec, dict) and isinstance(rec.get("files"), dict) else None

    def versions(self, family: str) -> list[str]:
        """The family's registered versions (complete records only)."""
        return [v for v in self._numbers(family) if self._is_complete(family, v)]

    def _is_complete(self, family: str, version: str) -> bool:
        try:
            return self._record(family, version) is not None
        except RegistryError:
            return True  # registered, but damaged: verify reports it

    def get(self, family: str, version: str | None = None) -> dict:
        """A version's record (the production one when `version` is None), with `stage`, `path`
        (the version's folder or URI) and `checkpoint` (its checkpoint's)."""
        prod = self.pointer(family)["version"]
        version = version or prod
        if version is None:
            raise RegistryError(f"family {family!r} has no production version")
        rec = self._record(family, version)
        if rec is None:
            raise RegistryError(f"{family} {version} is not registered")
        rec["stage"] = "production" if version == prod else "candidate"
        rec["path"] = self.version_uri(family, version)
        rec["checkpoint"] = self.loc.uri_of(self._version(family, version), "checkpoint")
        return rec

    def list(self, family: str | None = None) -> list[dict]:
        fams = [family] if family else self.families()
        return [self.get(f, v) for f in fams for v in self.versions(f)]

    def read_files(self, family: str, version: str | None = None) -> tuple[dict, dict[str, bytes]]:
        """(record, {file name inside checkpoint/: bytes}) of a version, every file checked against
        the sha256 recorded at registration: what a loader uses, read once, checked once."""
        rec = self.get(family, version)
        files, problems = {}, []
        for name, digest in rec["files"].items():
            try:
                data = self.loc.read_bytes(f"{self._version(family, rec['version'])}/{name}")
            except FileNotFoundError:
                problems.append(f"{name} is missing")
                continue
            if sha256_bytes(data) != digest:
                problems.append(f"{name} fails its sha256")
            files[name.removeprefix("checkpoint/")] = data
        if not rec["files"]:
            problems.append(f"{RECORD} lists no files")
        if problems:
            raise RegistryError(f"{family} {rec['version']}: " + "; ".join(problems))
        return rec, files

    def verify(self, family: str | None = None) -> list[str]:
        """Problems found (missing, altered or unexpected files, a broken production pointer, a
        registration that never finished); empty when sound."""
        problems = []
        for f in [family] if family else self.families():
            damaged, versions = set(), []
            for v in self._numbers(f):
                try:
                    complete = self._record(f, v) is not None
                except RegistryError as e:
                    problems.append(str(e))
                    damaged.add(v)
                    versions.append(v)
                    continue
                if not complete:
                    problems.append(
                        f"{f} {v}: registration never finished (no complete {RECORD}); it is not a "
                        f"version: delete {self.version_uri(f, v)}"
                    )
                    continue
                versions.append(v)
                found = self._check_files(f, v)
                damaged |= {v} if found else set()
                problems += found
            try:
                ptr = self.pointer(f)
            except RegistryError as e:
                problems.append(f"{f}: {e}")
                continue
            prod = ptr["version"]
            if prod and prod not in versions:
                problems.append(f"{f}: production points at missing version {prod}")
            elif prod in damaged:
                problems.append(
                    f"{f}: production version {prod} is damaged (see above); roll back or re-register"
                )
            gone = [v for v in ptr["history"] if v not in versions]
            if gone:
                problems.append(f"{f}: production history names missing version(s) {', '.join(gone)}")
        return problems

    def _check_files(self, family: str, version: str) -> list[str]:
        rel = self._version(family, version)
        rec = self._record(family, version)
        if rec is None:
            return [f"{family} {version}: {RECORD} lacks its 'files' checksums"]
        out = []
        for name, digest in rec["files"].items():
            if not self.loc.is_file(f"{rel}/{name}"):
                out.append(f"{family} {version}: {name} is missing")
            elif self.loc.sha256(f"{rel}/{name}") != digest:
                out.append(f"{family} {version}: {name} fails its sha256")
        listed = set(rec["files"]) | {RECORD}
        for p in self.loc.list_files(rel):
            name = p[len(rel) + 1 :]
            if name not in listed:
                out.append(f"{family} {version}: unexpected file {name} (not in {RECORD})")
        return out

    # ---- writing ---------------------------------------------------------------------------
    def register(
        self,
        family: str,
        checkpoint_dir: str | os.PathLike,
        *,
        config: dict,
        metrics: dict,
        source: str | None = None,
        promote: bool = False,
    ) -> dict:
        """Copy a checkpoint's safetensors/JSON files (a local folder or a URI) in as the family's
        next version; with `promote`, make it production too (or leave no version behind)."""
        src = resolve(str(checkpoint_dir))
        names = sorted(n for n, is_dir in src.list_dir().items() if not is_dir)
        bad = [n for n in names if not n.endswith(ALLOWED_SUFFIXES)]
        if bad or not any(n.endswith(".safetensors") for n in names):
            raise RegistryError(
                f"{checkpoint_dir}: a checkpoint holds only .safetensors + .json files and at least one "
                f"safetensors file (found {', '.join(bad) or 'no weights'})"
            )
        fam, version = self._family(family), None
        try:
            version = self._claim(fam)
            digests = {}
            for n in names:
                data = src.read_bytes(n)
                self.loc.write_bytes_atomic(f"{fam}/{version}/checkpoint/{n}", data)
                digests[f"checkpoint/{n}"] = sha256_bytes(data)
            record = {
                "family": family,
                "version": version,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "config": config,
                "metrics": metrics,
                "source": source or str(checkpoint_dir),
                "files": digests,
            }
            # The one write that makes the version visible (replacing this writer's placeholder).
            self.loc.write_bytes_atomic(f"{fam}/{version}/{RECORD}", _json(record))
            if promote:
                self._swap_pointer(family, lambda ptr: (version, ptr["history"] + [version]))
        except BaseException:
            if version is not None:
                self.loc.delete_dir(f"{fam}/{version}")  # registered (and promoted), or nothing at all
            raise
        return self.get(family, version)

    def _claim(self, family: str) -> str:
        """The next version number, taken by creating its placeholder record only if absent."""
        taken = self._numbers(family)
        n = max((int(v[1:]) for v in taken), default=0) + 1
        for _ in range(100):
            version = f"v{n:04d}"
            placeholder = {"version": version, "registering": f"{socket.gethostname()}:{os.getpid()}"}
            try:
                self.loc.write_if(f"{family}/{version}/{RECORD}", _json(placeholder), None)
                return version
            except WriteConflict:
                n += 1  # another registration took it first
            except BaseException:
                if not self.loc.list_files(f"{family}/{version}"):
                    self.loc.delete_dir(f"{family}/{version}")  # an empty folder this write made
                raise
        raise RegistryConflict(f"{family}: could not claim a version number (100 concurrent registrations?)")

    def promote(self, family: str, version: str) -> dict:
        """Make `version` production, after checking every file's sha256; compare-and-swap on the pointer."""
        self._version(family, version)  # validates the names before anything else
        if self._record(family, version) is None:
            raise RegistryError(f"{family} {version} is not registered")

        def decide(ptr):
            return version, ptr["history"] if ptr["version"] == version else ptr["history"] + [version]

        self._swap_pointer(family, decide)
        return self.get(family, version)

    def rollback(self, family: str) -> dict:
        """Return production to the version before the current one."""

        def decide(ptr):
            if len(ptr["history"]) < 2:
                raise RegistryError(f"{family}: no earlier production version to roll back to")
            return ptr["history"][-2], ptr["history"][:-1]

        return self.get(family, self._swap_pointer(family, decide, verb="roll back"))

    def _swap_pointer(self, family: str, decide, verb: str = "promote") -> str:
        """Point production where `decide(pointer)` says — (version, history), the version's files
        checked first — if the pointer is still the one read. Returns the version."""
        ptr, tag = self._pointer_tagged(family)
        version, history = decide(ptr)
        problems = self._check_files(family, version)
        if problems:
            raise RegistryError(f"refusing to {verb}: " + "; ".join(problems))
        new = {"version": version, "history": history}
        if new == ptr:
            return version
        try:
            self.loc.write_if(f"{family}/{POINTER}", _json(new), tag)
        except WriteConflict:
            now = self.pointer(family)["version"]
            raise RegistryConflict(
                f"{family}: conflict: another promotion or rollback changed production (now {now}) while "
                f"this {verb} of {version} was in flight; nothing was changed (retry if still wanted)"
            ) from None
        return version
