"""Where runs keep what outlives a process: checkpoints, Tune's trial state, ``--resume`` state and the
small files that tie them to MLflow runs (``mlflow_run_id``, ``final.json``...).

``storage.path`` in an experiment (null = ``$MOE_ORCH_STORAGE``, else ``./ray_results``) is one of:

- a local folder (the default), or a shared mount (NFS) that every node sees at the same path;
- an object store URI, read through pyarrow's filesystems: ``s3://bucket/prefix``, ``gs://bucket/prefix``.
  An S3-compatible server (MinIO, moto, Ceph) is named in the URI's query, the way pyarrow reads it:
  ``s3://bucket/prefix?endpoint_override=http://10.0.0.5:9000``.

Credentials never appear in the URI (it is logged as an MLflow param): they come from the environment,
as pyarrow and boto read them (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an
instance role; ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS).

``Storage`` is a folder in one of those: ``storage / "name"`` is a sub-folder, and it pickles as its
URI (a Tune trial or a Ray Train worker on another node reopens the filesystem there).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

STORAGE_ENV = "MOE_ORCH_STORAGE"
DEFAULT_STORAGE = "ray_results"
SCHEMES = ("file", "s3", "gs")
CREDENTIAL_KEYS = ("access_key", "secret_key", "session_token")  # pyarrow would read these from the query


def uri_errors(uri: str) -> list[str]:
    """What is wrong with a ``storage.path`` value (empty list if nothing): blank, an unknown scheme, or
    credentials in the query."""
    if not uri.strip():
        return ["got an empty string, expected null, a folder or an s3:// / gs:// URI"]
    if "://" not in uri:
        return []
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES:
        return [f"got {uri!r}, expected a folder or a URI with scheme {', '.join(s + '://' for s in SCHEMES)}"]
    secrets = sorted(set(parse_qs(parts.query)) & set(CREDENTIAL_KEYS))
    if secrets:  # never echo the value
        return [f"got a URI with {', '.join(secrets)} in its query, expected credentials in the environment "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or an instance role), never in the experiment"]
    return []


def resolve(path: str | None) -> Storage:
    """The storage an experiment's ``storage.path`` names: it, else ``$MOE_ORCH_STORAGE``, else
    ``./ray_results`` (a relative folder is made absolute here, on the driver)."""
    return Storage.at(path or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


class Storage:
    """A folder in a local filesystem or an object store (module docstring).

    Args:
        uri: the storage root as configured: an absolute local path or a ``scheme://`` URI.
        parts: the sub-folder names below the root.
    """

    def __init__(self, uri: str, parts: tuple[str, ...] = ()) -> None:
        self.uri, self.parts = uri, tuple(parts)
        self._opened: tuple[Any, str] | None = None

    @classmethod
    def at(cls, location: str | os.PathLike[str]) -> Storage:
        """The storage root at ``location``: a folder (made absolute) or a URI."""
        text = str(location)
        if "://" not in text:
            text = str(Path(text).expanduser().absolute())
        return cls(text)

    def __reduce__(self) -> tuple[Any, ...]:  # the filesystem is reopened where it is unpickled
        return (Storage, (self.uri, self.parts))

    def __truediv__(self, name: str) -> Storage:
        child = Storage(self.uri, (*self.parts, *[p for p in str(name).split("/") if p]))
        child._opened = self._opened
        return child

    def __repr__(self) -> str:
        return f"Storage({self})"

    def __str__(self) -> str:
        """For messages: the local path, or ``scheme://bucket/key`` (without the query)."""
        if self.is_local:
            return self.path
        return f"{urlsplit(self.uri).scheme}://{self.path}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Storage) and (self.uri, self.parts) == (other.uri, other.parts)

    def __hash__(self) -> int:
        return hash((self.uri, self.parts))

    # -- the filesystem ------------------------------------------------------------------------

    def _open(self) -> tuple[Any, str]:
        if self._opened is None:
            import pyarrow.fs as pafs

            if "://" in self.uri:
                fs, root = pafs.FileSystem.from_uri(self.uri)
            else:
                fs, root = pafs.LocalFileSystem(), self.uri
            self._opened = (fs, root.rstrip("/") or "/")
        return self._opened

    @property
    def filesystem(self) -> Any:
        """The ``pyarrow.fs.FileSystem`` (what Ray's ``RunConfig(storage_filesystem=...)`` takes)."""
        return self._open()[0]

    @property
    def path(self) -> str:
        """This folder's path inside ``filesystem`` (``bucket/prefix/...`` for an object store)."""
        root = self._open()[1]
        return "/".join([root.rstrip("/"), *self.parts]) if self.parts else root

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri or urlsplit(self.uri).scheme == "file"

    @property
    def local_path(self) -> Path | None:
        """The folder as a local path, or None for an object store."""
        return Path(self.path) if self.is_local else None

    def ray_run_config(self) -> dict[str, Any]:
        """``storage_path`` and ``storage_filesystem`` for Ray's ``RunConfig``: Ray Train and Tune keep
        checkpoints and trial state under this folder."""
        return {"storage_path": self.path, "storage_filesystem": self.filesystem}

    # -- files -----------------------------------------------------------------------------------

    def _info(self, name: str | None = None) -> Any:
        target = self / name if name else self
        return self.filesystem.get_file_info(target.path)

    def exists(self, name: str | None = None) -> bool:
        """Whether this folder (or the file/folder ``name`` in it) exists."""
        import pyarrow.fs as pafs

        return self._info(name).type != pafs.FileType.NotFound

    def read_text(self, name: str) -> str:
        with self.filesystem.open_input_stream((self / name).path) as f:
            return f.read().decode()

    def write_text(self, name: str, text: str) -> None:
        """Write the file ``name`` whole: readers see the old content or the new, never a part (an object
        store's PUT is atomic; a local file is written beside it, then renamed)."""
        fs, target = self.filesystem, (self / name).path
        self.mkdir()
        if not self.is_local:
            with fs.open_output_stream(target) as f:
                f.write(text.encode())
            return
        staging = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        with fs.open_output_stream(staging) as f:
            f.write(text.encode())
        fs.move(staging, target)

    def file(self, name: str) -> StoredFile:
        """The file ``name`` in this folder, with ``Path``'s ``exists``/``read_text``/``write_text``."""
        return StoredFile(self, name)

    def mkdir(self) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    def folders(self, prefix: str = "") -> list[Storage]:
        """The sub-folders whose names start with ``prefix``, sorted by name."""
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.path, allow_not_found=True, recursive=False)
        names = sorted(info.base_name for info in self.filesystem.get_file_info(selector)
                       if info.type == pafs.FileType.Directory and info.base_name.startswith(prefix))
        return [self / n for n in names]

    def delete(self) -> None:
        """Remove this folder and everything in it (nothing if it does not exist)."""
        if self.exists():
            self.filesystem.delete_dir(self.path)

    def move_to(self, other: Storage) -> None:
        """Move this folder to ``other`` (same storage). An object store has no rename: copy, then delete."""
        if self.is_local:
            self.filesystem.move(self.path, other.path)
            return
        import pyarrow.fs as pafs

        pafs.copy_files(self.path, other.path, source_filesystem=self.filesystem,
                        destination_filesystem=other.filesystem)
        self.delete()

    def upload(self, local_dir: str | Path) -> None:
        """Copy the local folder ``local_dir`` into this folder (created if needed)."""
        import pyarrow.fs as pafs

        pafs.copy_files(str(Path(local_dir).absolute()), self.path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem)

    def download(self, local_dir: str | Path) -> Path:
        """Copy this folder into the local folder ``local_dir``; returns it."""
        import pyarrow.fs as pafs

        local = Path(local_dir).absolute()
        local.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(local), source_filesystem=self.filesystem,
                        destination_filesystem=pafs.LocalFileSystem())
        return local


class StoredFile:
    """One small text file in a ``Storage`` folder (a run id, a trial's final result)."""

    def __init__(self, folder: Storage, name: str) -> None:
        self.folder, self.name = folder, name

    def exists(self) -> bool:
        return self.folder.exists(self.name)

    def read_text(self) -> str:
        return self.folder.read_text(self.name)

    def write_text(self, text: str) -> None:
        self.folder.write_text(self.name, text)

    def __str__(self) -> str:
        return f"{self.folder}/{self.name}"
