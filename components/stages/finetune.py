"""The finetune stage, between tune and evaluate: the backbone's top layers trained with the champion head from
features cached at the boundary, and the fine-tuned model kept unless the head alone scores better on the valid images
held out for decisions, for `ffx evaluate` (models/finetuned/finetune.json says which; the fine-tuned model is saved
beside it either way). Off (finetune.enabled: false), it only writes that decision, without TensorFlow."""
from __future__ import annotations

import shutil
import time
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
from components.tracking import closed_on_stop, setup_mlflow

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


def _finetune(config: Config, head_file, boundary: str, say: Say) -> dict:
    from components.finetune.batches import BoundaryBatches
    from components.finetune.model import build_finetune_model
    from components.finetune.train import TrainingState, compile_model, score, train

    head, metadata = load_head(head_file)
    started = time.perf_counter()
    extraction = extract_boundary(config, boundary_backbone(config, boundary))
    extract_seconds = time.perf_counter() - started
    computed = sum(r.computed for r in extraction.values())
    say(f"boundary {boundary}: {computed} view(s) through the frozen layers, the rest from the cache "
        f"({extract_seconds:.1f}s)")
    attrs = {name: check_boundary_file(config, boundary, name) for name in ("train", "valid")}
    for name, found in attrs.items():
        if found["class_names"] != metadata["class_names"]:
            raise FFXError(f"{boundary_path(config, name)}: classes {found['class_names']} differ from the head's "
                           f"{metadata['class_names']}; run `ffx tune` again")
    model = build_finetune_model(backbone_of_head(metadata["backbone"], metadata["weights_id"], config.root),
                                 boundary, head)
    binary = len(metadata["class_names"]) == 2
    settings, monitor = config.finetune, validation_metric(config.tuner.objective)
    train_batches = BoundaryBatches(boundary_path(config, "train"), settings.batch_size, binary, config.tuner.seed)
    compile_model(model, settings, binary, len(train_batches))
    held = _held_out_rows(config, boundary_path(config, "valid"))
    valid_batches = BoundaryBatches(boundary_path(config, "valid"), settings.batch_size, binary,
                                    rows=np.flatnonzero(~held))
    decision_batches = BoundaryBatches(boundary_path(config, "valid"), settings.batch_size, binary,
                                       rows=np.flatnonzero(held))
    head_score = score(model, decision_batches, monitor)  # before any step: the head alone, scored the same way
    say(f"head alone: {monitor} {head_score:.4f} on the {len(decision_batches.labels)} valid images held out "
        "for the decision")

    key = content_key({"head": file_digest(head_file), "train": attrs["train"]["key"],
                       "valid": attrs["valid"]["key"], "settings": settings_key(config)})
    folder = settings.directory / key[:16]
    state = TrainingState.load(folder, key)
    client, experiment_id = setup_mlflow(config)
    parent_run_id = metadata["search"]["parent_run_id"]
    if state.epochs_done:
        say(f"resuming after epoch {state.epochs_done} ({folder})")
    if not state.run_id:
        state.run_id = _start_run(client, experiment_id, parent_run_id, config, boundary, monitor, head_score,
                                  metadata, extract_seconds)

    def log_epoch(epoch: int, logs: dict, seconds: float) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {**logs, "epoch_seconds": seconds}
        client.log_batch(state.run_id, [Metric(k, v, now, epoch) for k, v in values.items()])
        say(f"epoch {epoch}/{settings.epochs}: {monitor} {logs[monitor]:.4f}, loss {logs['loss']:.4f} ({seconds:.1f}s)")

    try:  # a stopped run says how it stopped; a re-run resumes from the last epoch, in it
        with closed_on_stop(lambda status: client.set_terminated(state.run_id, status)):
            state = train(model, train_batches, valid_batches, settings, monitor, folder, state, log_epoch)
            # The best epoch's weights (chosen on the other valid images), scored on the held-out ones
            finetuned_score = None if state.best_score is None else score(model, decision_batches, monitor)
    finally:
        for batches in (train_batches, valid_batches, decision_batches):
            batches.close()
    kept = kept_model(monitor, head_score, finetuned_score)
    decision = {"enabled": True, "kept": kept, "objective": monitor, "head_score": head_score,
                "finetuned_score": finetuned_score, "decision_images": int(held.sum()),
                "finetuned_early_stopping_score": state.best_score, "boundary": boundary,
                "best_epoch": state.best_epoch,
                "epochs_run": state.epochs_done, "epoch_seconds": state.seconds,
                "stopped_early": state.stopped_early(settings.epochs),
                "extract_seconds": extract_seconds, "run_id": state.run_id, "parent_run_id": parent_run_id}
    if finetuned_score is None:
        _remove_finetuned_model(config)
    else:  # kept or not: `ffx evaluate` also scores the one not kept on test, for the record
        _save_finetuned(config, model, metadata, boundary, attrs["train"], decision)
    _finish_runs(client, state.run_id, parent_run_id, decision)
    say(f"kept {kept}: {monitor} head alone {head_score:.4f}, fine-tuned "
        f"{'none' if finetuned_score is None else f'{finetuned_score:.4f}'} (best epoch {state.best_epoch})")
    decision = write_decision(config, head_file, decision)
    shutil.rmtree(folder, ignore_errors=True)  # done and recorded: the checkpoints are no longer needed
    return decision


def _start_run(client, experiment_id: str, parent_run_id: str, config: Config, boundary: str, monitor: str,
               head_score: float, metadata: dict, extract_seconds: float) -> str:
    """The stage's MLflow run, a child of the search's parent run, with its params."""
    from mlflow.entities import Metric, Param

    run_id = client.create_run(experiment_id, run_name="finetune",
                               tags={"mlflow.parentRunId": parent_run_id, "ffx_kind": "finetune",
                                     "boundary": boundary}).info.run_id
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
