"""A bounded local cache for remote shards (``http(s)://`` URLs and ``pipe:`` commands).

A remote shard is fetched once into ``<data.cache_dir>/remote-shards/<sha256 of the URL>.tar``
and every later read (the next epoch, another rank or DataLoader worker on the node, the next
run) reads the local file. The rules, and why:

- **Never a half shard.** A download goes to ``<key>.part`` and is renamed to ``<key>.tar`` only
  when the stream ended cleanly and (for HTTP with a ``Content-Length``) the byte count matches;
  a killed reader leaves at most a ``.part``, which no reader ever opens and which the next
  process to download that shard overwrites (leftovers of dead processes are deleted when a
  process first uses the cache). A cached shard the tar reader finds damaged (a body cut short
  by a server that sent no Content-Length) is dropped (:meth:`RemoteCache.discard`) and fetched
  again at its next read.
- **Concurrency: one ``flock`` lock file per shard** (``<key>.lock``, kept: deleting a lock file
  while others wait on it would hand out two locks). The downloader holds it exclusively; readers
  hold it shared while the shard is open; the kernel drops a dead process's locks, so a SIGKILLed
  downloader never blocks the others. A process that finds a download under way waits for the
  shared lock (i.e. for that download) and then reads the result instead of fetching it again.
  The rename is atomic, so a reader sees either no shard or the whole one.
- **Bounded size, LRU.** After each download, whole shards are deleted oldest-used first (the
  file's mtime, touched at every open) until the cache holds at most ``data.cache_limit_gb``.
  A shard some reader has open is never deleted (its exclusive lock cannot be taken): the cache
  can exceed the limit by the shards open at that moment, and a single shard larger than the
  limit is still kept while it is read.
- **Retries, never a hang.** Connection errors, timeouts, truncated bodies, HTTP 5xx / 408 / 429
  and failing ``pipe:`` commands are retried up to ``data.remote_retries`` times with exponential
  back-off (each retry counted, ``data/remote_retries`` in the training metrics); sockets and
  commands time out after ``data.remote_timeout_s`` without a byte. The final failure (and any
  4xx at once) raises :class:`RemoteShardError`, which the stream counts as a corrupt shard.
- Credentials in URLs never reach a log line or an error (:func:`cvdist.redact.redact_text`);
  ``user:password@`` is sent as HTTP basic authentication, not as part of the request line.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import io
import os
import select
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional

from cvdist.redact import redact_text

CACHED_PREFIXES = ("http://", "https://", "pipe:")
_CHUNK = 1 << 20
_RETRYABLE_HTTP = frozenset({408, 429})
_CLEANED: set[str] = set()  # cache directories whose leftover .part files this process has cleaned


class RemoteShardError(OSError):
    """A remote shard could not be fetched (after its retries); counted as a corrupt shard."""


class _Transient(Exception):
    """A failed attempt worth retrying."""


def is_cached_source(url: str) -> bool:
    """Whether ``url`` is read through the remote-shard cache (``http(s)://`` and ``pipe:``)."""
    return url.startswith(CACHED_PREFIXES)


@dataclass
class RemoteCache:
    """Where and how remote shards are cached and fetched (from ``data.cache_dir``,
    ``data.cache_limit_gb``, ``data.remote_retries``, ``data.remote_timeout_s``)."""

    directory: str
    """The cache directory (``<data.cache_dir>/remote-shards``)."""
    limit_bytes: int = 50 << 30
    retries: int = 3
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    """First back-off; the n-th retry waits ``backoff_s * 2**(n-1)`` (at most 60 s)."""
    num_retries: int = 0
    """Retries made by this process (this object's copy) so far: the stream reports them."""

    def paths(self, url: str) -> tuple[Path, Path, Path]:
        """``(shard, partial download, lock file)`` of ``url``."""
        key = hashlib.sha256(url.encode()).hexdigest()[:40]
        base = Path(self.directory) / key
        return base.with_suffix(".tar"), base.with_suffix(".part"), base.with_suffix(".lock")

    @contextlib.contextmanager
    def open(self, url: str) -> Iterator[BinaryIO]:
        """The cached shard of ``url`` open for reading (fetched first if needed), locked against
        eviction while open; RemoteShardError if it cannot be fetched."""
        self._prepare()
        shard, _, lock_path = self.paths(url)
        with open(lock_path, "a+b") as lock:
            stream = self._locked_open(url, lock)
            try:
                yield stream
            finally:
                stream.close()

    def _locked_open(self, url: str, lock: BinaryIO) -> BinaryIO:
        """Open the shard holding a shared lock on ``lock``, fetching it under the exclusive lock
        when it is missing (see the module doc)."""
        shard, _, _ = self.paths(url)
        while True:
            fcntl.flock(lock, fcntl.LOCK_SH)  # waits while another process downloads this shard
            if shard.is_file():
                return _open_touched(shard)
            fcntl.flock(lock, fcntl.LOCK_UN)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.05)  # another process took it first: wait for its result above
                continue
            try:
                if not shard.is_file():
                    self._fetch(url)
                stream = _open_touched(shard)  # open before the downgrade: an evicted file stays readable
                self._evict(keep=shard)
            finally:
                fcntl.flock(lock, fcntl.LOCK_SH)  # (flock converts the lock in place)
            return stream

    def discard(self, url: str) -> None:
        """Delete the cached copy of ``url`` (found damaged) unless a reader has it open, so the
        next read fetches it again: a body cut short by a server that sent no Content-Length
        must not stay trusted."""
        shard, _, lock_path = self.paths(url)
        with contextlib.suppress(OSError), open(lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (suppressed): in use, kept
            shard.unlink(missing_ok=True)

    def _prepare(self) -> None:
        """Create the directory; delete ``.part`` files no live process is writing (once per process)."""
        if self.directory in _CLEANED:
            return
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        for part in Path(self.directory).glob("*.part"):
            with open(part.with_suffix(".lock"), "a+b") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being downloaded now
                part.unlink(missing_ok=True)
        _CLEANED.add(self.directory)

    def _fetch(self, url: str) -> None:
        """Download ``url`` to its ``.part`` and rename it into place, retrying transient errors."""
        shard, part, _ = self.paths(url)

        def attempt() -> None:
            try:
                with open(part, "wb") as out:
                    (_fetch_pipe if url.startswith("pipe:") else _fetch_http)(url, out, timeout_s=self.timeout_s)
                    os.fsync(out.fileno())  # the bytes on disk before the name says "complete"
                os.replace(part, shard)
            except BaseException:
                part.unlink(missing_ok=True)
                raise

        self._retrying(url, attempt)

    def fetch_small(self, url: str, *, max_bytes: int = 16 << 20) -> bytes:
        """The body of ``url`` (e.g. a remote ``manifest.json``), fetched now and never cached (the data
        set behind it may have changed), with the shards' retries and timeout; RemoteShardError for a
        body over ``max_bytes``."""
        body = _CappedBuffer(max_bytes)
        try:
            self._retrying(url, lambda: (body.seek(0), body.truncate(),
                                         _fetch_http(url, body, timeout_s=self.timeout_s)))
        except _TooLarge as error:
            raise RemoteShardError(str(error)) from None
        return body.getvalue()

    def _retrying(self, url: str, attempt: Callable[[], Any]) -> None:
        """``attempt()`` until it succeeds, retrying what raises _Transient with exponential back-off."""
        for attempt_index in range(self.retries + 1):
            try:
                attempt()
                return
            except _Transient as error:
                if attempt_index == self.retries:
                    raise RemoteShardError(f"{error} (after {attempt_index + 1} attempts, "  # (the reader names the URL)
                                           f"data.remote_retries={self.retries})") from None
                self.num_retries += 1
                wait = min(self.backoff_s * 2 ** attempt_index, 60.0)
                print(f"[cvdist] retrying remote shard {redact_text(url)} in {wait:.2g} s "
                      f"(retry {attempt_index + 1} of {self.retries}): {redact_text(str(error))}", flush=True)
                time.sleep(wait)

    def _evict(self, *, keep: Path) -> None:
        """Delete least-recently-used shards no reader holds until the cache fits its limit."""
        shards = []
        for path in Path(self.directory).glob("*.tar"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                shards.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in shards)
        for _, size, path in sorted(shards):
            if total <= self.limit_bytes:
                return
            if path == keep:
                continue
            with open(path.with_suffix(".lock"), "a+b") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a reader has it open (or it is being fetched): never evicted
                path.unlink(missing_ok=True)
                total -= size


class _TooLarge(ValueError):
    """(Not an OSError: the HTTP reader must not take it for a transient network error.)"""


class _CappedBuffer(io.BytesIO):
    """An in-memory body that refuses to grow past ``limit`` bytes."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def write(self, data) -> int:
        if self.tell() + len(data) > self.limit:
            raise _TooLarge(f"the body is larger than {self.limit} bytes")
        return super().write(data)


def _open_touched(shard: Path) -> BinaryIO:
    stream = open(shard, "rb")
    with contextlib.suppress(OSError):
        os.utime(shard)  # the LRU clock: eviction deletes the least recently opened first
    return stream


def _http_request(url: str) -> urllib.request.Request:
    """A request for ``url`` with any ``user:password@`` moved into a basic-auth header
    (urllib would put it into the host name)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)))
    token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    return request


def _fetch_http(url: str, out: BinaryIO, *, timeout_s: float) -> None:
    """Copy the body of ``url`` into ``out``; _Transient for what a retry may cure."""
    try:
        with urllib.request.urlopen(_http_request(url), timeout=timeout_s) as response:
            expected = response.headers.get("Content-Length")
            received = 0
            while chunk := response.read1(_CHUNK):  # what has arrived: the timeout is per silence, not per MiB
                out.write(chunk)
                out.flush()  # (so a killed download's .part shows how far it got)
                received += len(chunk)
    except urllib.error.HTTPError as error:
        message = f"HTTP {error.code} {error.reason}"
        if error.code >= 500 or error.code in _RETRYABLE_HTTP:
            raise _Transient(message) from None
        raise RemoteShardError(message) from None
    except (OSError, http.client.HTTPException) as error:  # reset, refused, timeout, IncompleteRead, ...
        raise _Transient(f"{type(error).__name__}: {error}") from None
    if expected is not None and expected.isdigit() and int(expected) != received:
        raise _Transient(f"got {received} of {expected} bytes (Content-Length)")


def _fetch_pipe(url: str, out: BinaryIO, *, timeout_s: float) -> None:
    """Copy the output of the ``pipe:`` command into ``out``; _Transient when it fails or is
    silent for ``timeout_s``."""
    process = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        while True:
            ready, _, _ = select.select([process.stdout], [], [], timeout_s)
            if not ready:
                raise _Transient(f"the command wrote nothing for {timeout_s:g} s (data.remote_timeout_s)")
            chunk = os.read(process.stdout.fileno(), _CHUNK)
            if not chunk:
                break
            out.write(chunk)
            out.flush()
        status = process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    if status != 0:
        raise _Transient(f"the command exited with status {status}")


def default_remote_cache() -> RemoteCache:
    """The cache with the defaults of ``DataConfig``: ``<default cache dir>/remote-shards``."""
    from cvdist.data.builtin_shards import default_cache_dir

    return RemoteCache(directory=str(default_cache_dir() / "remote-shards"))


def open_remote(url: str, cache: Optional[RemoteCache]) -> contextlib.AbstractContextManager[BinaryIO]:
    """``url``'s cached shard open for reading, through ``cache`` (None: :func:`default_remote_cache`)."""
    return (cache or default_remote_cache()).open(url)
