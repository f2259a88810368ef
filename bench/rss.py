"""One extraction in a fresh process, printing its peak resident memory: `python -m bench.rss --images N ...`.

Run by bench.run at N and 4N images; streaming extraction keeps the peak flat in N.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--backbone", type=json.loads, required=True)
    args = parser.parse_args()

    from bench.common import REPO
    from bench.run import train_records
    from components.config import BackboneConfig
    from components.features.backbone import build_backbone
    from components.features.extraction import extract_split

    split = train_records(args.data, args.images)
    backbone = build_backbone(BackboneConfig(**args.backbone), REPO)
    extract_split(split, backbone, args.out / "train.h5", args.out / "cache", args.batch_size, 89478485)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    print(json.dumps({"images": args.images, "peak_rss_mb": peak_kb / 1024}))


if __name__ == "__main__":
    main()
