"""The audit stage: what the stored features say about the data (label issues, leaks and near-duplicates, outliers,
drift of new images), written to metrics/audit.json (counts, a DVC metric), reports/audit.json (the lists) and
reports/audit.html (thumbnails), and logged to an MLflow run tagged ffx_kind=audit. It never moves or relabels a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.audit.counts import AUDIT_FILE
from components.audit.findings import Audit, audit_features
from components.audit.html import write_audit_html
from components.config import Config
from components.data.dataset import SPLITS
from components.features.extraction import folder_features
from components.features.identity import features_content_key, load_split_features
from components.files import write_json_atomic, write_text_atomic
from components.tracking import create_run_once, git_commit, setup_mlflow

METRICS_FILE = AUDIT_FILE   # in metrics.dir: counts per kind
LISTS_FILE = "audit.json"    # in reports.dir: the findings, listed
REPORT_FILE = "audit.html"   # in reports.dir
AUDIT_KIND = "audit"         # ffx_kind tag of the audit's MLflow runs


@dataclass
class AuditResult:
    audit: Audit
    lists: dict
    files: list[Path]
    run_id: str


def audit_outputs(config: Config) -> tuple[Path, Path, Path]:
    return (config.metrics.dir / METRICS_FILE, config.reports.dir / LISTS_FILE, config.reports.dir / REPORT_FILE)


def audit_stage(config: Config, drift_folder: Path | None = None) -> AuditResult:
    """Audit train, valid and test from their stored features; with `drift_folder` (or audit.drift_folder), the
    share of that folder's images outside the training distribution. Write and log the findings."""
    splits = {name: load_split_features(config, name) for name in SPLITS}
    folder = drift_folder or config.audit.drift_folder
    new = (str(folder), folder_features(config, folder)[1]) if folder else None
    audit = audit_features(splits, config.audit, new)
    lists = audit.lists(config.audit.listed, config.audit.neighbours_shown)
    metrics_path, lists_path, report_path = audit_outputs(config)
    write_json_atomic(metrics_path, {**audit.counts(), "features": features_content_key(config)})
    write_json_atomic(lists_path, lists)
    write_audit_html(report_path, lists, config.data.root)
    files = [metrics_path, lists_path, report_path]
    return AuditResult(audit, lists, files, log_audit(config, audit, files))


def log_audit(config: Config, audit: Audit, files: list[Path]) -> str:
    """An MLflow run in the project's experiment, tagged ffx_kind=audit: the counts as metrics, the files as
    artifacts, the audit settings as params."""
    client, experiment_id = setup_mlflow(config)
    run_id = create_run_once(client, experiment_id, "audit",
                             {"ffx_kind": AUDIT_KIND, "git_commit": git_commit(config.root)})
    for key, value in config.section("audit").items():
        client.log_param(run_id, f"audit.{key}", value)
    for key, value in audit.counts().items():
        client.log_metric(run_id, f"audit_{key}", value)
    for path in files:  # metrics/audit.json and reports/audit.json share a name: one folder each
        client.log_artifact(run_id, str(path), f"audit/{path.parent.name}")
    client.set_terminated(run_id)
    return run_id


def write_exclusions(path: Path, audit: Audit) -> int:
    """The data.exclude list of what the audit found (relative paths, each with why); returns how many."""
    found = audit.exclusions()
    lines = ["# Images `ffx audit` found; review, delete lines to keep an image, then set data.exclude to this file.",
             *(f"{relpath}  # {why}" for relpath, why in found)]
    write_text_atomic(Path(path), "\n".join(lines) + "\n")
    return len(found)
