"""Best graphs shared through an Optuna artifact store (``search.artifacts``): each uploaded as one
``.tar`` artifact of its trial, fetched into the reader's run folder."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from .config import SearchError


def open_artifacts(path: str | Path) -> Any:
    """The Optuna ``FileSystemArtifactStore`` at ``path`` (made if missing): where best graphs are uploaded,
    e.g. a folder on a file system that every worker mounts."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SearchError(f"search.artifacts = {str(path)!r}: cannot create the artifact folder: {exc}") from exc
    return FileSystemArtifactStore(str(path))


def upload_graph(store: Any, graph_dir: Path, trial: optuna.Trial | FrozenTrial,
                 storage: optuna.storages.BaseStorage | None = None) -> str:
    """Upload a saved graph folder to ``store`` as one ``.tar`` artifact of ``trial``; returns its id."""
    import tarfile
    import tempfile

    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory(prefix="mase-lite-graph-") as tmp:
        tar = Path(tmp) / f"{Path(graph_dir).name}.tar"
        with tarfile.open(tar, "w") as fh:
            fh.add(graph_dir, arcname=".")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return upload_artifact(artifact_store=store, file_path=str(tar), study_or_trial=trial, storage=storage)


def fetch_graph(store: Any, artifact_id: str, dest: Path) -> Path:
    """Download the graph artifact ``artifact_id`` from ``store`` and unpack it into ``dest`` (kept if
    it is there already); returns ``dest``. SearchError if the store does not hold it."""
    import tarfile
    import tempfile

    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    with tempfile.TemporaryDirectory(prefix="mase-lite-graph-") as tmp:
        tar = Path(tmp) / "graph.tar"
        try:
            download_artifact(artifact_store=store, file_path=str(tar), artifact_id=artifact_id)
        except ArtifactNotFound as exc:
            raise SearchError(f"graph artifact {artifact_id} is not in the artifact store ({exc}); "
                              f"is search.artifacts the same folder for every worker?") from exc
        part = dest.with_name(dest.name + f".part-{os.getpid()}")
        with tarfile.open(tar) as fh:
            fh.extractall(part, filter="data")
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            part.rename(dest)
        except OSError:  # another reader got there first
            import shutil

            shutil.rmtree(part, ignore_errors=True)
    return dest


def remove_graph(store: Any, artifact_id: str) -> None:
    """Remove a graph artifact (missing ones are ignored)."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        store.remove(artifact_id)
    except (ArtifactNotFound, FileNotFoundError):
        pass
