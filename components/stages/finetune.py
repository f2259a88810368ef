"""The finetune stage, between tune and evaluate: the backbone's top layers trained with the champion head from
features cached at the boundary, and the fine-tuned model kept unless the head alone scores better on the valid images
held out for decisions, for `ffx evaluate` (models/finetuned/finetune.json says which; the fine-tuned model is saved
beside it either way). Off (finetune.enabled: false), it only writes that decision, without TensorFlow."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from components.config import BackboneConfig, Config
from components.data.holdout import decision_mask
from components.errors import FFXError
from components.features.backbone import backbone_of_head
from components.files import atomic_path, content_key, file_digest, write_json_atomic
from components.finetune.boundary import (
    boundary_backbone,
    boundary_config,
    boundary_path,
    check_boundary_file,
    extract_boundary,
    resolve_boundary,
    write_boundary_index,
)
from components.finetune.decision import (
    KEPT_HEAD,
    finetuned_dir,
    kept_model,
    settings_key,
    validation_metric,
    write_decision,
)
from components.model.head_file import HEAD_FILE, METADATA_FILE, head_paths, load_head
from components.tracking import closed_on_stop, create_run_once, setup_mlflow

Say = Callable[[str], None]


def finetune_stage(config: Config, say: Say | None = None) -> dict:
    """Run the stage; returns the decision written (see components.finetune.decision)."""
    say = say or (lambda _: None)
    head_file = head_paths(config)[0]
    if not config.finetune.enabled:
        _remove_finetuned_model(config)
        write_boundary_index(config)
        return write_decision(config, head_file, {"enabled": False, "kept": KEPT_HEAD})
    return _finetune(config, head_file, resolve_boundary(config), say)


def _held_out_rows(config: Config, valid_file) -> np.ndarray:
    """The boundary valid file's rows held out for the decision: the images the search never saw either."""
    with h5py.File(valid_file, "r") as handle:
        return decision_mask(handle["sha1"][()], handle["labels"][()], config.tuner.decision_fraction)


def _remove_finetuned_model(config: Config) -> None:
    for name in (HEAD_FILE, METADATA_FILE):
        (finetuned_dir(config) / name).unlink(missing_ok=True)


def _finetune(config: Config, head_file: Path, boundary: str, say: Say) -> dict:
    from components.finetune.train import remove_checkpoints, score, train

    head, metadata = load_head(head_file)
    attrs, extract_seconds = _boundary_features(config, boundary, metadata["class_names"], say)
    model = _compiled_model(config, boundary, head, metadata)
    monitor = validation_metric(config.tuner.objective)
    with _boundary_batches(config, len(metadata["class_names"]) == 2) as (train_batches, valid_batches, held_out):
        head_score = score(model, held_out, monitor)  # before any step: the head alone, scored the same way
        say(f"head alone: {monitor} {head_score:.4f} on the {len(held_out.labels)} valid images held out "
            "for the decision")
        folder, state = _checkpoint(config, head_file, attrs, say)
        client, experiment_id = setup_mlflow(config)
        if not state.run_id:
            state.run_id = _start_run(client, experiment_id, config, boundary, monitor, head_score, metadata,
                                      extract_seconds)
        # A stopped run says how it stopped; a re-run resumes from the last epoch, in it
        with closed_on_stop(lambda status: client.set_terminated(state.run_id, status)):
            state = train(model, train_batches, valid_batches, config.finetune, monitor, folder, state,
                          _epoch_logger(client, state.run_id, monitor, config.finetune.epochs, say))
            # The best epoch's weights (chosen on the other valid images), scored on the held-out ones
            finetuned_score = None if state.best_score is None else score(model, held_out, monitor)
    decision = {"enabled": True, "kept": kept_model(monitor, head_score, finetuned_score), "objective": monitor,
                "head_score": head_score, "finetuned_score": finetuned_score,
                "decision_images": len(held_out.labels), "finetuned_early_stopping_score": state.best_score,
                "boundary": boundary, "best_epoch": state.best_epoch, "epochs_run": state.epochs_done,
                "epoch_seconds": state.seconds, "stopped_early": state.stopped_early(config.finetune.epochs),
                "extract_seconds": extract_seconds, "run_id": state.run_id,
                "parent_run_id": metadata["search"]["parent_run_id"]}
    decision = _record(config, head_file, model, metadata, attrs["train"], decision, client, say)
    remove_checkpoints(folder)  # done and recorded: the checkpoints are no longer needed
    return decision


def _compiled_model(config: Config, boundary: str, head, metadata: dict):
    """The top of the backbone the head was trained on, from `boundary`, with the head; compiled to train."""
    from components.finetune.model import build_finetune_model
    from components.finetune.train import compile_model

    backbone = backbone_of_head(metadata["backbone"], metadata["weights_id"], config.root)
    model = build_finetune_model(backbone, boundary, head)
    compile_model(model, config.finetune, binary=len(metadata["class_names"]) == 2)
    return model


def _boundary_features(config: Config, boundary: str, class_names: list[str], say: Say) -> tuple[dict, float]:
    """Every feature file at the boundary (through the cache), checked against params.yaml and the head's classes:
    (the train and valid files' attributes, seconds taken)."""
    started = time.perf_counter()
    extraction = extract_boundary(config, boundary_backbone(config, boundary))
    seconds = time.perf_counter() - started
    computed = sum(r.computed for r in extraction.values())
    say(f"boundary {boundary}: {computed} view(s) through the frozen layers, the rest from the cache "
        f"({seconds:.1f}s)")
    attrs = {name: check_boundary_file(config, boundary, name) for name in ("train", "valid")}
    for name, found in attrs.items():
        if found["class_names"] != class_names:
            raise FFXError(f"{boundary_path(config, name)}: classes {found['class_names']} differ from the head's "
                           f"{class_names}; run `ffx tune` again")
    return attrs, seconds


@contextlib.contextmanager
def _boundary_batches(config: Config, binary: bool):
    """(train, valid, decision) batches of the boundary files, closed after the block: train shuffled by
    tuner.seed; the valid images early stopping watches; those held out for the decision."""
    from components.finetune.batches import BoundaryBatches

    size, valid_file = config.finetune.batch_size, boundary_path(config, "valid")
    held = _held_out_rows(config, valid_file)
    batches = (BoundaryBatches(boundary_path(config, "train"), size, binary, config.tuner.seed),
               BoundaryBatches(valid_file, size, binary, rows=np.flatnonzero(~held)),
               BoundaryBatches(valid_file, size, binary, rows=np.flatnonzero(held)))
    try:
        yield batches
    finally:
        for each in batches:
            each.close()


def _checkpoint(config: Config, head_file: Path, attrs: dict, say: Say):
    """(folder, TrainingState): the checkpoints of training this head on these boundary files with these settings,
    resumed where a stopped run left them."""
    from components.finetune.train import TrainingState

    key = content_key({"head": file_digest(head_file), "train": attrs["train"]["key"],
                       "valid": attrs["valid"]["key"], "settings": settings_key(config)})
    folder = config.finetune.directory / key[:16]
    state = TrainingState.load(folder, key)
    if state.epochs_done:
        say(f"resuming after epoch {state.epochs_done} ({folder})")
    return folder, state


def _epoch_logger(client, run_id: str, monitor: str, epochs: int, say: Say):
    """An epoch's metrics and seconds to the stage's run, and its line."""
    def log_epoch(epoch: int, logs: dict, seconds: float) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        client.log_batch(run_id, [Metric(k, v, now, epoch) for k, v in {**logs, "epoch_seconds": seconds}.items()])
        say(f"epoch {epoch}/{epochs}: {monitor} {logs[monitor]:.4f}, loss {logs['loss']:.4f} ({seconds:.1f}s)")
    return log_epoch


def _record(config: Config, head_file: Path, model, metadata: dict, train_attrs: dict, decision: dict, client,
            say: Say) -> dict:
    """The fine-tuned model saved (kept or not: `ffx evaluate` also scores the one not kept on test, for the record)
    when an epoch was trained, the runs finished, then the decision written."""
    if decision["finetuned_score"] is None:
        _remove_finetuned_model(config)
    else:
        _save_finetuned(config, model, metadata, decision["boundary"], train_attrs, decision)
    _finish_runs(client, decision["run_id"], decision["parent_run_id"], decision)
    finetuned = decision["finetuned_score"]
    say(f"kept {decision['kept']}: {decision['objective']} head alone {decision['head_score']:.4f}, fine-tuned "
        f"{'none' if finetuned is None else f'{finetuned:.4f}'} (best epoch {decision['best_epoch']})")
    return write_decision(config, head_file, decision)


def _start_run(client, experiment_id: str, config: Config, boundary: str, monitor: str, head_score: float,
               metadata: dict, extract_seconds: float) -> str:
    """The stage's MLflow run, a child of the search's parent run, with its params."""
    from mlflow.entities import Metric, Param

    run_id = create_run_once(client, experiment_id, "finetune", {
        "mlflow.parentRunId": metadata["search"]["parent_run_id"], "ffx_kind": "finetune", "boundary": boundary})
    params = {f"finetune.{k}": v for k, v in config.section("finetune").items()}
    params.update({"finetune.boundary": boundary, "objective": monitor, "precision": config.extract.precision,
                   **{f"head.{k}": v for k, v in metadata["search"].get("hyperparameters", {}).items()}})
    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     metrics=[Metric(f"head_{monitor}", head_score, now, 0),
                              Metric("extract_seconds", extract_seconds, now, 0)])
    return run_id


def _finish_runs(client, run_id: str, parent_run_id: str, decision: dict) -> None:
    """Both scores and which was kept, on the stage's run and on the search's parent run (which `ffx evaluate`
    registers the model from)."""
    monitor = decision["objective"]
    scores = {f"head_{monitor}": decision["head_score"], "train_seconds": sum(decision["epoch_seconds"]),
              "best_epoch": decision["best_epoch"]}
    if decision["finetuned_score"] is not None:
        scores[f"finetuned_{monitor}"] = decision["finetuned_score"]
    for key, value in scores.items():
        client.log_metric(run_id, key, value)
        client.log_metric(parent_run_id, f"finetune_{key}", value)
    for run in (run_id, parent_run_id):
        client.set_tag(run, "finetune_kept", decision["kept"])
    client.set_terminated(run_id, "FINISHED")


def _save_finetuned(config: Config, model, metadata: dict, boundary: str, train_attrs: dict, decision: dict) -> None:
    """models/finetuned/head.keras + head.json (its best epoch), as `ffx tune` saves a head: a model of the boundary
    backbone's features, so evaluation, prediction and registration use it as they use a head."""
    folder = finetuned_dir(config)
    trained = BackboneConfig(**{k: v for k, v in metadata["backbone"].items() if k != "precision"})
    spec = boundary_config(trained, boundary)
    finetuned = dict(metadata, backbone=spec.model_dump(mode="json") | {"precision": config.extract.precision},
                     feature_shape=train_attrs["feature_shape"], finetune=decision)
    with atomic_path(folder / HEAD_FILE) as tmp:
        model.save(tmp)
    write_json_atomic(folder / METADATA_FILE, finetuned)
