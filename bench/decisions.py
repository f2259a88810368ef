"""Head vs fine-tuned on a real dataset, decided on the valid images held out for decisions, over several seeds.

    python -m bench.decisions [--data DIR] [--seeds 42 43 44] [--trials 60] [--ema 0.99 0] [--work DIR]
                              [--out bench/figures/decisions-DATE.json]

Per seed, in a project folder of its own under --work (its own MLflow store; one shared feature cache, so the
images go through the backbone once): `ffx extract`, `ffx tune` and `ffx finetune` with fine-tuning on, as a user
runs them (1 augmented view, TTA, every other knob at its default). Then, outside the pipeline's choice, both models
are scored on test: each model's test accuracy with its 95% interval and McNemar's exact test on the same images.
Per finetune.ema_momentum in --ema, the stage runs again on the same head and boundary features, so the variants
differ only in it: what the fine-tuning defaults are chosen from is the search part of valid (each epoch's score,
from the stage's MLflow run) and the held-out part (the decision); test is read once per model, for the record.

Each (seed, ema) result is appended to WORK/cells.jsonl as it finishes: a stopped run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench.common import FACES, REPO, ffx, log  # noqa: E402

SETTINGS = ("extract.augment.copies=1", "predict.tta=true", "finetune.enabled=true")


def project(work: Path, seed: int) -> Path:
    folder = work / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return folder


def overrides(data: Path, work: Path, seed: int, trials: int, ema: float) -> list[str]:
    return [f"data.root={data}", f"features.cache_dir={work / 'feature-cache'}", f"tuner.seed={seed}",
            f"tuner.max_trials={trials}", "train.epochs=50", f"finetune.ema_momentum={ema}", *SETTINGS]


def scored(folder: Path, values: list[str]) -> dict:
    """Both models on test (the pipeline's own functions), the paired test, and the stage's decision."""
    from components.config import load_config
    from components.finetune.decision import read_decision
    from components.model.metrics import accuracy_interval, paired_test
    from components.stages.evaluate import candidate_test_scores

    config = load_config(folder / "params.yaml", values)
    decision = read_decision(config)
    correct = candidate_test_scores(config, decision)
    return {"decision": {k: decision[k] for k in ("kept", "objective", "head_score", "finetuned_score",
                                                   "finetuned_early_stopping_score", "decision_images",
                                                   "best_epoch", "epochs_run", "stopped_early")},
            "test": {name: {"accuracy": float(hits.mean()), "ci95": accuracy_interval(hits), "count": int(len(hits))}
                     for name, hits in correct.items()},
            "paired": paired_test(correct["head"], correct["finetuned"], ("head", "finetuned")),
            "epochs": epoch_scores(config, decision)}


def epoch_scores(config, decision: dict) -> list[float]:
    """The stage's validation objective after each epoch, on the search part of valid (its MLflow run)."""
    from components.tracking import setup_mlflow

    client, _ = setup_mlflow(config)
    history = client.get_metric_history(decision["run_id"], decision["objective"])
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def run_cell(data: Path, work: Path, seed: int, trials: int, ema: float) -> dict:
    folder = project(work, seed)
    values = overrides(data, work, seed, trials, ema)
    # One head per seed: a later ema variant fine-tunes the same head (a search resumed would train it anew)
    commands = ("finetune",) if (folder / "models" / "head.keras").is_file() else ("extract", "tune", "finetune")
    seconds = {command: ffx(folder, command, values) for command in commands}
    return {"seed": seed, "ema_momentum": ema, "trials": trials, "seconds": seconds, **scored(folder, values)}


def summary(cells: list[dict]) -> dict:
    """Per ema_momentum: how often each model was kept, mean test accuracies, the decision's agreement with test."""
    import numpy as np

    out = {}
    for ema in sorted({c["ema_momentum"] for c in cells}, reverse=True):
        group = [c for c in cells if c["ema_momentum"] == ema]
        head = [c["test"]["head"]["accuracy"] for c in group]
        tuned = [c["test"]["finetuned"]["accuracy"] for c in group]
        follows = [c["decision"]["kept"] == ("finetuned" if t >= h else "head") for c, h, t in zip(group, head, tuned)]
        out[f"ema_{ema}"] = {
            "seeds": [c["seed"] for c in group], "kept": [c["decision"]["kept"] for c in group],
            "decision_follows_test": follows,
            "valid_held_out": {"head": float(np.mean([c["decision"]["head_score"] for c in group])),
                               "finetuned": float(np.mean([c["decision"]["finetuned_score"] for c in group]))},
            "best_epochs": [c["decision"]["best_epoch"] for c in group],
            "test_mean": {"head": float(np.mean(head)), "finetuned": float(np.mean(tuned))},
            "test_sd": {"head": float(np.std(head, ddof=1)) if len(head) > 1 else 0.0,
                        "finetuned": float(np.std(tuned, ddof=1)) if len(tuned) > 1 else 0.0}}
    return out


def main(argv: list[str] | None = None) -> None:
    from bench.common import about

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FACES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--ema", type=float, nargs="+", default=[0.99])
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "decisions")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    header = about("bench.decisions", argv)  # the code the cells run now (a resumed run's cells say their own)
    args.work.mkdir(parents=True, exist_ok=True)
    cells_file = args.work / "cells.jsonl"
    cells = [json.loads(line) for line in cells_file.read_text().splitlines()] if cells_file.is_file() else []
    for ema in args.ema:
        for seed in args.seeds:
            if any(c["seed"] == seed and c["ema_momentum"] == ema and c["trials"] == args.trials for c in cells):
                continue
            log(f"== seed {seed}, finetune.ema_momentum {ema}")
            cell = {"commit": header["commit"],
                    **run_cell(args.data.resolve(), args.work.resolve(), seed, args.trials, ema)}
            log(json.dumps(cell))
            with cells_file.open("a") as handle:
                handle.write(json.dumps(cell) + "\n")
            cells.append(cell)
    chosen = [c for c in cells if c["seed"] in args.seeds and c["ema_momentum"] in args.ema
              and c["trials"] == args.trials]
    out = args.out or REPO / "bench" / "figures" / f"decisions-{time.strftime('%Y-%m-%d')}.json"
    figures = {"about": header, "data": str(args.data), "settings": list(SETTINGS), "trials": args.trials,
               "cells": chosen, "summary": summary(chosen)}
    out.write_text(json.dumps(figures, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
