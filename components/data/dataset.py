"""The dataset on disk: SPLIT/CLASS/image files, checked and hashed by content."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from components.data.images import check_image, is_image_name
from components.errors import BadImagesError, DatasetError
from components.files import file_digest

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class ImageRecord:
    path: Path      # absolute path of the file
    relpath: str    # path relative to the dataset root, e.g. train/cat/1.jpg
    label: int
    size: int
    sha1: str       # hash of the bytes: the identity of the image for caches


@dataclass(frozen=True)
class Split:
    name: str
    root: Path
    class_names: tuple[str, ...]
    records: tuple[ImageRecord, ...]

    @property
    def content_hash(self) -> str:
        """Hash of the manifest (relative path, size, byte hash, label) and class names."""
        digest = hashlib.sha256(json.dumps(self.class_names).encode())
        for r in self.records:
            digest.update(f"{r.relpath}\0{r.size}\0{r.sha1}\0{r.label}\n".encode())
        return digest.hexdigest()

    def counts(self) -> dict[str, int]:
        labels = Counter(r.label for r in self.records)
        return {name: labels[label] for label, name in enumerate(self.class_names)}


def _image_files(folder: Path) -> list[Path]:
    """Image files below `folder` (recursively, links followed once), hidden ones left out."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            loop = any(os.path.realpath(p) == real for p in Path(dirpath).parents)  # a link back up its own path
            what = "symbolic link loop" if loop else "folder reached twice through symbolic links"
            raise DatasetError(f"{dirpath}: {what} (it is {real}); remove the link")
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_name(Path(f)))
    return found


def folder_records(folder: Path) -> list[ImageRecord]:
    """Every image file below `folder` (any layout, label 0: unknown), hashed like a split's."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder not found")
    return [ImageRecord(path, path.relative_to(folder).as_posix(), 0, path.stat().st_size, file_digest(path))
            for path in _image_files(folder)]


def read_exclusions(path: Path | None) -> frozenset[str]:
    """data.exclude: image paths relative to the dataset root, one a line (blank lines and # comments ignored)."""
    if path is None:
        return frozenset()
    if not Path(path).is_file():
        raise DatasetError(f"{path}: exclusion list not found (data.exclude)")
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return frozenset(line for line in lines if line)


def scan_split(root: Path, name: str, exclude: frozenset[str] = frozenset()) -> Split:
    folder = root / name
    if not folder.is_dir():
        raise DatasetError(f"{folder}: split folder missing (expected {', '.join(SPLITS)} under {root})")
    class_names = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not class_names:
        raise DatasetError(f"{folder}: no class folders (expected one sub-folder per class)")
    if len(class_names) < 2:
        raise DatasetError(f"{folder}: only one class ({class_names[0]}); at least two are needed")
    records = []
    for label, class_name in enumerate(class_names):
        files = [p for p in _image_files(folder / class_name) if p.relative_to(root).as_posix() not in exclude]
        if not files:
            raise DatasetError(f"{folder / class_name}: class folder has no images"
                               + (" left after data.exclude" if exclude else ""))
        records += [ImageRecord(path, path.relative_to(root).as_posix(), label, path.stat().st_size, file_digest(path))
                    for path in files]
    return Split(name, root, class_names, tuple(records))


def scan_dataset(root: Path, splits: tuple[str, ...] = SPLITS, exclude: frozenset[str] = frozenset()
                 ) -> dict[str, Split]:
    """Scan every split, leaving out the `exclude` paths (relative to root), and check they share the same class
    names."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (set data.root in params.yaml)")
    scanned = {name: scan_split(root, name, exclude) for name in splits}
    reference = scanned[splits[0]].class_names
    for name, split in scanned.items():
        if split.class_names != reference:
            raise DatasetError(
                f"{root / name}: classes {list(split.class_names)} differ from {splits[0]}'s {list(reference)}")
    return scanned


def screen_split(split: Split, max_pixels: int, on_bad_image: str) -> tuple[Split, dict[str, str]]:
    """Decode every image (in parallel threads), then apply data.on_bad_image: raise listing every bad file, or
    drop them and return what was dropped (relpath -> reason)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        reasons = pool.map(lambda r: check_image(r.path, max_pixels), split.records)
        bad = {r.relpath: reason for r, reason in zip(split.records, reasons) if reason}
    if not bad:
        return split, {}
    if on_bad_image == "error":
        lines = "\n".join(f"  {split.root / rel}: {reason}" for rel, reason in sorted(bad.items()))
        raise BadImagesError(f"{len(bad)} bad image(s) in {split.root / split.name} "
                             f"(set data.on_bad_image: skip to leave them out):\n{lines}")
    kept = dataclasses.replace(split, records=tuple(r for r in split.records if r.relpath not in bad))
    for class_name, count in kept.counts().items():
        if count == 0:
            raise DatasetError(f"{split.root / split.name / class_name}: no usable images left after skipping bad ones")
    return kept, bad
