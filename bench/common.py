"""What every bench shares: where the repository and the face dataset are, how a bench prints, and a project made
of links to a subset of a dataset."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "datasets" / "faces"


def log(message: str) -> None:
    print(message, flush=True)


def subset_project(source: Path, folder: Path, per_class: int) -> Path:
    """A dataset of links to the first `per_class` images of each class and split (never copies)."""
    if per_class == 0:
        return source
    from components.data.images import is_image_name

    root = folder / "data"
    for split in ("train", "valid", "test"):
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(p for p in class_dir.iterdir() if is_image_name(p))[:per_class]:
                link = target / path.name
                if not link.exists():  # a resumed run reuses the links it made
                    link.symlink_to(path.resolve())
    return root
