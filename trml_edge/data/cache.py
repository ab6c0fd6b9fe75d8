"""The CLIP feature cache: per-frame image embeddings and text embeddings, stored once, memory-mapped.

Layout::

    CACHE/<fingerprint[:16]>/index.json          what is stored, and where
    CACHE/<fingerprint[:16]>/<chunk>-frames.npy  (b, T, D) float32 per-frame embeddings (0 on padded frames)
    CACHE/<fingerprint[:16]>/<chunk>-mask.npy    (b, T) bool frame mask
    CACHE/<fingerprint[:16]>/<chunk>-text.npy    (b, D) float32 text embeddings

The fingerprint is a sha256 over the CLIP weights, the preprocessing and the frame sampling (see
``trml_edge.train.features.fingerprint``): another backbone or another preprocessing gets another directory,
so stale embeddings are never read. Inside, entries are keyed by clip id and by a signature of the clip's
sources (its text and its video file's size), so an edited row or a replaced video is embedded again.
Clips that failed to decode are remembered with their signature too, and are not retried until they change.

Writes are resumable: each chunk is written under a unique name (temporary file, then rename) and only
then added to ``index.json``, which is replaced atomically under a file lock. An interrupted run loses at
most the chunk it was writing. Only numpy files and JSON are read: no pickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

from trml_edge.errors import DataError

CACHE_VERSION = 1
INDEX = "index.json"
DEFAULT_DIR = ".trml-features"  # under the dataset directory, when no other place is given


class MemoryStore:
    """The same interface as ``FeatureCache``, in memory: what an uncached run uses, so both paths share code."""

    persistent = False

    def __init__(self) -> None:
        self.clips: dict[str, tuple[str, int, str]] = {}  # clip id -> (chunk, row, signature)
        self.failed: dict[str, tuple[str, str, str]] = {}  # clip id -> (signature, kind, reason)
        self.chunks: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def lookup(self, clip_id: str, sig: str) -> bool:
        entry = self.clips.get(clip_id)
        return entry is not None and entry[2] == sig

    def failure(self, clip_id: str, sig: str) -> tuple[str, str] | None:
        f = self.failed.get(clip_id)
        return (f[1], f[2]) if f is not None and f[0] == sig else None

    def add_chunk(self, ids: list[str], sigs: list[str], frame_emb: np.ndarray, mask: np.ndarray,
                  text_emb: np.ndarray, failures: dict[str, tuple[str, str, str]]) -> None:
        name = uuid.uuid4().hex[:12]
        if ids:
            self._store(name, frame_emb, mask, text_emb)
        self._record(name, ids, sigs, failures)

    def _store(self, name: str, frame_emb, mask, text_emb) -> None:
        self.chunks[name] = (frame_emb, mask, text_emb)

    def _record(self, name: str, ids, sigs, failures) -> None:
        for row, (cid, sig) in enumerate(zip(ids, sigs)):
            self.clips[cid] = (name, row, sig)
            self.failed.pop(cid, None)
        self.failed.update(failures)

    def _arrays(self, name: str):
        return self.chunks[name]

    def gather(self, ids: list[str], n_frames: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(frame_emb (N,T,D) float32, mask (N,T) bool, text_emb (N,D) float32) for ``ids``, in order."""
        frames = np.zeros((len(ids), n_frames, dim), np.float32)
        mask = np.zeros((len(ids), n_frames), bool)
        text = np.zeros((len(ids), dim), np.float32)
        by_chunk: dict[str, list[tuple[int, int]]] = {}
        for i, cid in enumerate(ids):
            name, row, _ = self.clips[cid]
            by_chunk.setdefault(name, []).append((i, row))
        for name, pairs in by_chunk.items():
            f, m, t = self._arrays(name)
            dst, src = (np.array(x) for x in zip(*pairs))
            frames[dst], mask[dst], text[dst] = f[src], m[src], t[src]
        return frames, mask, text


class FeatureCache(MemoryStore):
    """Embeddings on disk for one fingerprint. ``meta`` (what the fingerprint covers) is stored for people."""

    persistent = True

    def __init__(self, root: Path, fingerprint: str, meta: dict, writable: bool = True):
        super().__init__()
        self.dir = Path(root) / fingerprint[:16]
        self.fingerprint = fingerprint
        self.meta = meta
        self.writable = writable
        if writable:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._load_index()

    @property
    def index_path(self) -> Path:
        return self.dir / INDEX

    def _load_index(self) -> None:
        if not self.index_path.is_file():
            return
        try:
            d = json.loads(self.index_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"feature cache index {self.index_path} is corrupt ({e}); delete {self.dir} to "
                            "rebuild it") from e
        if d.get("version") != CACHE_VERSION or d.get("fingerprint") != self.fingerprint:
            raise DataError(f"{self.dir} holds another cache (version {d.get('version')}, fingerprint "
                            f"{str(d.get('fingerprint'))[:16]}); delete that directory to rebuild it")
        self.clips = {k: tuple(v) for k, v in d["clips"].items()}
        self.failed = {k: tuple(v) for k, v in d["failed"].items()}

    @contextlib.contextmanager
    def _locked(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: chunk names are unique, so a race can only lose index entries
            yield
            return
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _store(self, name: str, frame_emb, mask, text_emb) -> None:
        for suffix, arr in (("frames", frame_emb), ("mask", mask), ("text", text_emb)):
            tmp = self.dir / f".{name}-{suffix}.tmp.npy"
            np.save(tmp, np.ascontiguousarray(arr))
            os.replace(tmp, self.dir / f"{name}-{suffix}.npy")

    def _record(self, name: str, ids, sigs, failures) -> None:
        if not self.writable:
            raise DataError(f"feature cache {self.dir} is read-only here and lacks {len(ids) + len(failures)} clips; "
                            "run `trml-edge features` on the dataset again, or pass another cache directory")
        with self._locked():
            self._load_index()  # merge what another process may have added meanwhile
            super()._record(name, ids, sigs, failures)
            d = {"version": CACHE_VERSION, "fingerprint": self.fingerprint, "meta": self.meta,
                 "clips": self.clips, "failed": self.failed}
            tmp = self.dir / f".{INDEX}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(d) + "\n", encoding="utf-8")
            os.replace(tmp, self.index_path)

    def _arrays(self, name: str):
        if name not in self.chunks:
            try:
                self.chunks[name] = tuple(np.load(self.dir / f"{name}-{s}.npy", mmap_mode="r", allow_pickle=False)
                                          for s in ("frames", "mask", "text"))
            except (OSError, ValueError) as e:
                raise DataError(f"feature cache chunk {name} in {self.dir} is unreadable ({e}); delete {self.dir} "
                                "to rebuild the cache") from e
        return self.chunks[name]

    def gather(self, ids, n_frames, dim):
        try:
            return super().gather(ids, n_frames, dim)
        finally:
            self.chunks.clear()  # drop the memory maps; the gathered copies are what training keeps
