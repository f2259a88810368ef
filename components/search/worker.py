"""A chief or worker process of a distributed search (KerasTuner's distributed mode), run as
`python -m components.search.worker` by components.search.distributed, or by hand on each machine of a search that
spans several."""
from __future__ import annotations

import argparse
import sys

from components.config import load_config
from components.runtime import quiet_tensorflow, run_entry
from components.search.distributed import distributed_role, share_cores_among_workers


def main(argv: list[str] | None = None) -> None:
    """One chief or worker process. Started by run_tuner_processes, or by hand on each machine of a search that
    spans several (the three KERASTUNER_* variables set, the chief's address in KERASTUNER_ORACLE_IP)."""
    parser = argparse.ArgumentParser(prog="python -m components.search.worker", description=main.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param")
    parser.add_argument("--progress", action="store_true", help="print a line per finished trial")
    args = parser.parse_args(argv)
    role = distributed_role()
    if role == "single":
        parser.error("set KERASTUNER_TUNER_ID (chief, tuner0, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT")
    config = load_config(args.params, args.set)
    quiet_tensorflow()
    if role == "worker":
        share_cores_among_workers(config.tuner.workers)
    # Imported once TensorFlow is imported quietly: they import it.
    from components.features.identity import search_splits
    from components.search.trial_logging import progress_line
    from components.search.tuner import check_compatible, open_parent_run, run_trials

    train, valid = search_splits(config)
    check_compatible(train, valid)
    parent = open_parent_run(config, train, valid, joining=True)
    progress = (lambda info: print(progress_line(info), file=sys.stderr, flush=True)) if args.progress else None
    tuner, _ = run_trials(config, train, valid, parent, progress, owner=False)
    if role == "chief":
        tuner.save()  # the chief's oracle state on disk otherwise still lists the last trials as ongoing


if __name__ == "__main__":
    # `ffx tune` stopped by SIGTERM stops its workers so: their trials' runs end KILLED
    run_entry(main, "worker stopped by SIGTERM; `ffx tune` resumes the search")
