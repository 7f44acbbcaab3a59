"""One writer at a time per store: `ingest`, `synth gaap`, `store refit` and `store gc` hold the
store's lock from reading the live manifest to swapping in the new one.

Without it two ingests would both read version N, both write N+1 from it, and the second swap
would drop the first's facts (or the second's `clean_orphans` would delete the first's staging
folder). A writer that finds the lock held waits, up to a deadline, then fails with a message
naming the holder; nothing is written either way.

On a local filesystem the lock is `flock` on `STORE/.lock`: the kernel drops it when the holder
dies, so a killed ingest never leaves a stale lock. The file names its holder while held and is
emptied on release (so a failed ingest leaves the store byte-identical). On an object store the
lock is a lease: the object `STORE/.lock` names its owner and an expiry, created only if absent
(or replacing only an expired lease) by a conditional write (S3 If-None-Match / If-Match, see
pipeline.storage); a crashed writer's lease expires after LEASE_SECONDS. Where the store offers
no conditional writes (gs:// through pyarrow, an S3 server that ignores them) the lease is
written and read back, and two writers starting in the same instant can both win: run one
writer at a time there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys
import time
import uuid

from pipeline.storage import Location, WriteConflict
from pipeline.store.errors import StoreError

LOCK_FILE = ".lock"  # = layout.LOCK_FILE (layout imports this module)
DEFAULT_WAIT = 600.0  # seconds a writer waits for another to finish
LEASE_SECONDS = 6 * 3600  # object stores: a lease outlives any ingest, and a crashed writer's expires
POLL = (0.05, 1.0)  # first and longest pause between attempts, seconds


class StoreLocked(StoreError):
    """Another writer held the store's lock for longer than this one would wait."""


class StoreLock:
    """The store's exclusive writer lock, as a context manager: `with StoreLock(loc, wait): ...`."""

    def __init__(self, loc: Location, wait: float = DEFAULT_WAIT, announce: bool = True):
        self.loc, self.wait, self.announce = loc, wait, announce
        self._fd: int | None = None
        self._lease: str | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None or self._lease is not None

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        pause, announced = POLL[0], False
        while not self._try():
            holder = self._holder()
            if time.monotonic() + pause > deadline:
                raise StoreLocked(
                    f"store {self.loc.uri} is being written by another process ({holder}); waited "
                    f"{self.wait:g} s: retry when it is done, or wait longer (--wait SECONDS)"
                )
            if self.announce and not announced:
                print(
                    f"tunestack: store {self.loc.uri} is being written by another process ({holder}); "
                    f"waiting up to {self.wait:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                announced = True
            time.sleep(pause)  # polling a lock held by another process: no event to wait on
            pause = min(pause * 2, POLL[1])

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)  # the file names no holder once released
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
        if self._lease is not None:
            try:
                if self._read_lease().get("owner") == self._lease:
                    self.loc.delete_file(LOCK_FILE)
            finally:
                self._lease = None

    # ---- local: flock ----------------------------------------------------------------------
    def _try(self) -> bool:
        return self._try_flock() if self.loc.local else self._try_lease()

    def _try_flock(self) -> bool:
        import fcntl

        os.makedirs(self.loc.path, exist_ok=True)
        path = self.loc.join(LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed the store (a failed first ingest) after we opened the file
            os.close(fd)
            return self._try_flock()
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_owner()).encode())
        self._fd = fd
        return True

    # ---- object stores: a lease ------------------------------------------------------------
    def _try_lease(self) -> bool:
        current, tag = self.loc.read_tagged(LOCK_FILE)
        lease = _parse(current)
        if lease and lease.get("expires", 0) > time.time():
            return False
        owner = uuid.uuid4().hex
        body = json.dumps({**_owner(), "owner": owner, "expires": time.time() + LEASE_SECONDS}).encode()
        try:  # only if there is no lease, or still the expired one we read
            self.loc.write_if(LOCK_FILE, body, tag if current is not None else None)
        except WriteConflict:
            return False
        if self.loc.conditional_writes is None and self._read_lease().get("owner") != owner:
            return False  # no compare-and-swap here: another writer's lease landed last
        self._lease = owner
        return True

    def _read_lease(self) -> dict:
        try:
            return _parse(self.loc.read_bytes(LOCK_FILE))
        except OSError:
            return {}

    def _holder(self) -> str:
        h = self._read_lease()
        if not h:
            return "holder unknown"
        return f"pid {h.get('pid')} on {h.get('host')} since {h.get('since')}"


def _parse(data: bytes | None) -> dict:
    try:
        out = json.loads(data) if data else {}
    except ValueError:  # a torn or foreign file: no holder we can name
        return {}
    return out if isinstance(out, dict) else {}


def _owner() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv[:3])[:200],
    }
