"""The one place that knows the registry layout.

    REGISTRY/<family>/
      v0001/  checkpoint/ (the checkpoint's safetensors + JSON files, copied) + version.json
      v0002/  ...
      production.json   {"version": "v0002", "history": ["v0001", "v0002"]}   (atomic swap)
      .lock             serialises writers (promote, rollback, register) across processes

`version.json` holds the model definition (resolved config), metrics, where the checkpoint came
from, creation time and the sha256 of every file. Promotion refuses a version whose files do not
match their checksums, so a corrupted or half-copied model never reaches production.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from pipeline.home import registry_dir

ALLOWED_SUFFIXES = (".safetensors", ".json")
POINTER = "production.json"
_VERSION = re.compile(r"^v\d{4,}$")
_FAMILY = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class RegistryError(Exception):
    """A registry operation that cannot be done: unknown version, bad checksum, nothing to roll back."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file and nothing else
        raise


def _copy_file(src: Path, dst: Path) -> None:
    """Copy in chunks through this module's `open` and fsync: one write path for every registry file."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


class Registry:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or registry_dir())

    # ---- layout ----------------------------------------------------------------------------
    def family_dir(self, family: str) -> Path:
        if not _FAMILY.match(family or ""):
            raise RegistryError(f"bad family name {family!r}")
        return self.root / family

    def version_dir(self, family: str, version: str) -> Path:
        if not _VERSION.match(version or ""):
            raise RegistryError(f"bad version {version!r} (expected v0001, v0002, …)")
        return self.family_dir(family) / version

    @contextlib.contextmanager
    def _locked(self, family: str):
        d = self.family_dir(family)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield d
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ---- reading ---------------------------------------------------------------------------
    def families(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _FAMILY.match(p.name))

    def pointer(self, family: str) -> dict:
        p = self.family_dir(family) / POINTER
        if not p.exists():
            return {"version": None, "history": []}
        try:
            ptr = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise RegistryError(f"{p}: production pointer unreadable ({e})") from e
        if not isinstance(ptr, dict) or not isinstance(ptr.get("history"), list) or "version" not in ptr:
            raise RegistryError(f"{p}: production pointer lacks 'version' and a 'history' list")
        return ptr

    def versions(self, family: str) -> list[str]:
        d = self.family_dir(family)
        return sorted(p.name for p in d.iterdir() if _VERSION.match(p.name)) if d.is_dir() else []

    def get(self, family: str, version: str | None = None) -> dict:
        """A version's record (the production one when `version` is None), with `stage` and `path`."""
        prod = self.pointer(family)["version"]
        version = version or prod
        if version is None:
            raise RegistryError(f"family {family!r} has no production version")
        d = self.version_dir(family, version)
        if not (d / "version.json").exists():
            raise RegistryError(f"{family} {version} is not registered")
        rec = json.loads((d / "version.json").read_text())
        rec["stage"] = "production" if version == prod else "candidate"
        rec["path"] = str(d)
        rec["checkpoint"] = str(d / "checkpoint")
        return rec

    def verified(self, family: str, version: str | None = None) -> dict:
        """`get`, after checking every file of the version against its recorded sha256."""
        record = self.get(family, version)
        problems = self._check_files(family, record["version"])
        if problems:
            raise RegistryError("; ".join(problems))
        return record

    def list(self, family: str | None = None) -> list[dict]:
        fams = [family] if family else self.families()
        return [self.get(f, v) for f in fams for v in self.versions(f)]

    def verify(self, family: str | None = None) -> list[str]:
        """Problems found (missing, altered or unexpected files, a broken production pointer); empty when sound."""
        problems = []
        for f in [family] if family else self.families():
            damaged = set()
            for v in self.versions(f):
                found = self._check_files(f, v)
                damaged |= {v} if found else set()
                problems += found
            try:
                ptr = self.pointer(f)
            except RegistryError as e:
                problems.append(f"{f}: {e}")
                continue
            prod = ptr["version"]
            if prod and prod not in self.versions(f):
                problems.append(f"{f}: production points at missing version {prod}")
            elif prod in damaged:
                problems.append(
                    f"{f}: production version {prod} is damaged (see above); roll back or re-register"
                )
            gone = [v for v in ptr["history"] if v not in self.versions(f)]
            if gone:
                problems.append(f"{f}: production history names missing version(s) {', '.join(gone)}")
        return problems

    def _check_files(self, family: str, version: str) -> list[str]:
        d = self.version_dir(family, version)
        try:
            rec = json.loads((d / "version.json").read_text())
        except (OSError, ValueError) as e:
            return [f"{family} {version}: version.json unreadable ({e})"]
        files = rec.get("files") if isinstance(rec, dict) else None
        if not isinstance(files, dict):
            return [f"{family} {version}: version.json lacks its 'files' checksums"]
        out = []
        for name, digest in files.items():
            p = d / name
            if not p.is_file():
                out.append(f"{family} {version}: {name} is missing")
            elif sha256_file(p) != digest:
                out.append(f"{family} {version}: {name} fails its sha256")
        listed = set(files) | {"version.json"}
        for p in sorted(d.rglob("*")):
            if p.is_file() and str(p.relative_to(d)) not in listed:
                out.append(f"{family} {version}: unexpected file {p.relative_to(d)} (not in version.json)")
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
        precision: str = "float32",
    ) -> dict:
        """Copy a checkpoint's (or an export's) safetensors/JSON files in as the family's next
        version; `precision` ("float32" or "int8" for an INT8 export) is kept in its record."""
        src = Path(checkpoint_dir)
        files = sorted(p for p in src.iterdir() if p.is_file())
        bad = [p.name for p in files if not p.name.endswith(ALLOWED_SUFFIXES)]
        if bad or not any(p.name.endswith(".safetensors") for p in files):
            raise RegistryError(
                f"{src}: a checkpoint holds only .safetensors + .json files and at least one "
                f"safetensors file (found {', '.join(bad) or 'no weights'})"
            )
        with self._locked(family) as fam:
            nums = [int(v[1:]) for v in self.versions(family)]
            version = f"v{max(nums, default=0) + 1:04d}"
            staging = fam / f".staging-{uuid.uuid4().hex[:8]}"
            (staging / "checkpoint").mkdir(parents=True)
            try:
                for p in files:
                    _copy_file(p, staging / "checkpoint" / p.name)
                record = {
                    "family": family,
                    "version": version,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "config": config,
                    "metrics": metrics,
                    "source": source or str(src),
                    "precision": precision,
                    "files": {
                        f"checkpoint/{p.name}": sha256_file(staging / "checkpoint" / p.name) for p in files
                    },
                }
                _write_json_atomic(staging / "version.json", record)
                os.replace(staging, fam / version)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            if promote:  # under the same lock: registered and promoted, or neither
                try:
                    self._promote_locked(family, version)
                except BaseException:
                    shutil.rmtree(fam / version, ignore_errors=True)
                    raise
        return self.get(family, version)

    def promote(self, family: str, version: str) -> dict:
        """Make `version` production, atomically, after checking every file's sha256."""
        self.version_dir(family, version)  # validates the name before anything else
        with self._locked(family):
            self._promote_locked(family, version)
        return self.get(family, version)

    def _promote_locked(self, family: str, version: str) -> None:
        if version not in self.versions(family):
            raise RegistryError(f"{family} {version} is not registered")
        problems = self._check_files(family, version)
        if problems:
            raise RegistryError("refusing to promote: " + "; ".join(problems))
        ptr = self.pointer(family)
        if ptr["version"] != version:
            _write_json_atomic(
                self.family_dir(family) / POINTER, {"version": version, "history": ptr["history"] + [version]}
            )

    def rollback(self, family: str) -> dict:
        """Return production to the version before the current one."""
        with self._locked(family):
            history = self.pointer(family)["history"]
            if len(history) < 2:
                raise RegistryError(f"{family}: no earlier production version to roll back to")
            target = history[-2]
            problems = self._check_files(family, target)
            if problems:
                raise RegistryError("refusing to roll back: " + "; ".join(problems))
            _write_json_atomic(
                self.family_dir(family) / POINTER, {"version": target, "history": history[:-1]}
            )
        return self.get(family, target)
