"""Where a training run lives: a local (or shared) directory, or s3://bucket/prefix on object storage.

One pyarrow filesystem serves both, the same object Ray Train writes its checkpoints through, so the driver,
Ray Train's controller and every worker reach the run the same way. S3 settings come from the usual AWS
environment (AWS_ENDPOINT_URL for MinIO or a local server, AWS_REGION, static keys); without static keys each
node uses its own credential chain (an instance profile on the cluster), so no short-lived token is frozen into
a long run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from pyarrow import fs

from neox.errors import ConfigError
from neox.pipeline.layout import CHECKPOINT_PREFIX


@dataclasses.dataclass(frozen=True)
class RunStorage:
    filesystem: fs.FileSystem
    root: str  # the run folder's path inside `filesystem`
    uri: str  # how users name it: an absolute local path or s3://bucket/prefix/name

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, fs.LocalFileSystem)

    @property
    def parent(self) -> str:
        return self.root.rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        return self.root.rsplit("/", 1)[1]

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def read_text(self, *parts: str) -> str | None:
        if self.filesystem.get_file_info(self.path(*parts)).type != fs.FileType.File:
            return None
        with self.filesystem.open_input_stream(self.path(*parts)) as stream:
            return stream.read().decode()

    def read_tail(self, size: int, *parts: str) -> str | None:
        """The file's last `size` bytes (its first line may be cut), without reading the rest."""
        info = self.filesystem.get_file_info(self.path(*parts))
        if info.type != fs.FileType.File:
            return None
        with self.filesystem.open_input_file(self.path(*parts)) as stream:
            stream.seek(max(0, info.size - size))
            return stream.read().decode(errors="replace")

    def write_text(self, text: str, *parts: str) -> None:
        self.filesystem.create_dir(self.path(*parts[:-1]), recursive=True)
        with self.filesystem.open_output_stream(self.path(*parts)) as stream:
            stream.write(text.encode())

    def delete(self, *parts: str) -> None:
        """Remove the file if it is there."""
        if self.filesystem.get_file_info(self.path(*parts)).type == fs.FileType.File:
            self.filesystem.delete_file(self.path(*parts))

    def checkpoints(self) -> list[str]:
        """Names of the run's checkpoint folders (Ray Train's `checkpoint_<timestamp>`), oldest first."""
        selector = fs.FileSelector(self.root, allow_not_found=True)
        return sorted(
            info.base_name
            for info in self.filesystem.get_file_info(selector)
            if info.type == fs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX)
        )

    def local_dir(self) -> Path:
        """A local directory for the run's working files: the run folder itself, or for object storage a
        scratch folder whose contents `publish` uploads."""
        if self.is_local:
            return Path(self.root)
        return Path(tempfile.gettempdir()) / "neox-runs" / self.uri.replace("://", "/")

    def publish(self, local: Path, *parts: str) -> None:
        """Copy a file or folder from `local_dir()` to the run's storage (nothing to do for a local run)."""
        if self.is_local:
            return
        if local.is_dir():
            fs.copy_files(
                str(local),
                self.path(*parts),
                source_filesystem=fs.LocalFileSystem(),
                destination_filesystem=self.filesystem,
            )
        else:
            self.write_text(local.read_text(), *parts)


def s3_filesystem() -> fs.S3FileSystem:
    env = os.environ
    options = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        options.update(
            access_key=env["AWS_ACCESS_KEY_ID"],
            secret_key=env["AWS_SECRET_ACCESS_KEY"],
            session_token=env.get("AWS_SESSION_TOKEN"),
        )
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return fs.S3FileSystem(**options)


def run_storage(storage_path: str, name: str) -> RunStorage:
    """The run `name` under `storage_path` (a local path, or s3://bucket[/prefix])."""
    if "/" in name or not name:
        raise ConfigError(f"a run's folder must be a plain name, got {name!r}")
    filesystem, root, uri = storage_root(storage_path)
    return RunStorage(filesystem, f"{root}/{name}", f"{uri}/{name}")


def run_names(storage_path: str) -> list[str]:
    """The folders directly under `storage_path` (one per run), by name; none when it does not exist yet."""
    filesystem, root, _ = storage_root(storage_path)
    if filesystem.get_file_info(root).type == fs.FileType.File:
        raise ConfigError(f"storage path {storage_path} is a file, not a folder of runs")
    infos = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
    return sorted(info.base_name for info in infos if info.type == fs.FileType.Directory)


def storage_root(storage_path: str) -> tuple[fs.FileSystem, str, str]:
    """(file system, path inside it, URI) of a storage path: a local path, or s3://bucket[/prefix]."""
    scheme, sep, rest = storage_path.partition("://")
    if not sep:
        root = str(Path(storage_path).resolve())
        return fs.LocalFileSystem(), root, root
    if scheme != "s3":
        raise ConfigError(f"train.storage_path must be a local path or s3://bucket/prefix, got {storage_path!r}")
    if not rest.strip("/"):
        raise ConfigError(f"train.storage_path {storage_path!r} names no bucket")
    return s3_filesystem(), rest.strip("/"), f"s3://{rest.strip('/')}"
