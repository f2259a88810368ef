"""ffx audit on generated data with known faults: flipped labels, test images copied into train (re-encoded and
resized), blank and noise frames. And its params: one line naming the key."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, run_ffx, write_params

from components.config import load_config
from components.errors import ConfigError
from components.features.identity import features_content_key

FLIPS, LEAKS, ODD = 4, 5, 3  # 4 = 5% of the 80 train images


def inject_faults(data: Path, seed: int) -> dict:
    """Flip 5% of the train labels (move to the other class folder), copy 5 test images into train re-encoded at
    JPEG quality 60 and resized 1.5x, add 3 blank images. Returns the faults' relative paths."""
    rng = np.random.default_rng(seed)
    train = sorted(p for p in (data / "train").rglob("*") if p.is_file())
    classes = sorted(p.name for p in (data / "train").iterdir())
    flipped = []
    for path in rng.choice(train, FLIPS, replace=False):
        other = next(c for c in classes if c != path.parent.name)
        dest = data / "train" / other / f"flipped_{path.name}"
        path.rename(dest)
        flipped.append(dest.relative_to(data).as_posix())
    leaks = []
    for path in rng.choice(sorted(p for p in (data / "test").rglob("*") if p.is_file()), LEAKS, replace=False):
        with Image.open(path) as image:
            copy = image.convert("RGB").resize((image.width * 3 // 2, image.height * 3 // 2))
        dest = data / "train" / path.parent.name / f"leaked_{path.stem}.jpg"
        copy.save(dest, quality=60)
        leaks.append(frozenset({path.relative_to(data).as_posix(), dest.relative_to(data).as_posix()}))
    odd = []
    # Blank frames: white, black, grey. (Uniform noise is no odd image here: make_dataset's images are coloured
    # noise; it ranks after the grayscale image make_dataset puts in each split and class.)
    for index, shade in enumerate((255, 0, 128)):
        pixels = np.full((40 + 8 * index, 40, 3), shade, np.uint8)
        dest = data / "train" / classes[index % 2] / f"odd_{index}.png"
        Image.fromarray(pixels).save(dest)
        odd.append(dest.relative_to(data).as_posix())
    return {"flipped": flipped, "leaks": leaks, "odd": odd}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """A dataset with known faults, extracted (random VGG16 weights, 32 px, average pooling: fast and enough to tell
    these images apart), then audited by `ffx audit --json`."""
    from components.stages.extract import extract_stage

    root = tmp_path_factory.mktemp("faulty")
    make_dataset(root / "data", per_split={"train": 40, "valid": 10, "test": 10})
    faults = inject_faults(root / "data", seed=7)
    write_params(root, backbone={"name": "vgg16", "weights": "none", "input_size": 32, "pooling": "avg"})
    config = load_config(root / "params.yaml")
    extract_stage(config)
    result = run_ffx(root, "audit", "--json", "--write-exclusions", "exclude.txt")
    assert result.returncode == 0, result.stderr
    return root, config, faults, json.loads(result.stdout)


@pytest.fixture(scope="module")
def audit(faulty):
    """The same audit, in full (every image ranked), without the outputs."""
    from components.audit.findings import audit_features
    from components.features.identity import load_split_features

    config = faulty[1]
    return audit_features({s: load_split_features(config, s) for s in ("train", "valid", "test")}, config.audit)


@pytest.mark.e2e
def test_flipped_labels_rank_first(faulty, audit):
    root, config, faults, _ = faulty
    ranked = [audit.paths[row] for row in audit.label_ranking()[:FLIPS]]
    assert len(set(ranked) & set(faults["flipped"])) >= 0.6 * FLIPS, ranked
    assert set(audit.paths) >= set(faults["flipped"])


@pytest.mark.e2e
def test_label_issues_are_listed_surest_first(faulty):
    from components.audit.findings import audit_features
    from components.features.identity import load_split_features

    config = faulty[1]
    # cleanlab's widest filter: every image the label model gets wrong is listed, so that there is an order to check
    settings = config.audit.model_copy(update={"label_method": "predicted_neq_given"})
    lists = audit_features({s: load_split_features(config, s) for s in ("train", "valid", "test")}, settings).lists(
        50, 1)
    scores = [issue["score"] for issue in lists["label_issues"]]
    assert len(set(scores)) > 1 and scores == sorted(scores), scores


@pytest.mark.e2e
def test_every_leak_is_found_as_a_cross_split_pair(faulty):
    _, _, faults, lists = faulty
    found = {frozenset({p["a"]["path"], p["b"]["path"]}) for p in lists["leaks"]}
    assert all(leak in found for leak in faults["leaks"]), (faults["leaks"], found)
    assert all({p["a"]["split"], p["b"]["split"]} == {"train", "test"} for p in lists["leaks"]
               if frozenset({p["a"]["path"], p["b"]["path"]}) in faults["leaks"])


@pytest.mark.e2e
def test_odd_images_are_the_top_outliers(faulty, audit):
    _, _, faults, lists = faulty
    top = [audit.paths[row] for row in audit.neighbours.ranked_outliers[:2 * ODD]]
    assert set(faults["odd"]) <= set(top), top
    assert [o["path"] for o in lists["outliers"]] == [p for p in top if p in {o["path"] for o in lists["outliers"]}]


@pytest.mark.e2e
def test_outputs_report_and_exclusion_list(faulty):
    root, config, faults, lists = faulty
    counts = json.loads((config.metrics.dir / "audit.json").read_text())
    assert counts.pop("features") == features_content_key(config)  # which feature files it was written for
    assert counts == lists["counts"] and counts["leaks"] >= LEAKS and counts["images"] == 80 + 20 + 20 + LEAKS + ODD
    page = (config.reports.dir / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 2 * LEAKS and faults["odd"][0] in page
    excluded = {line.split("#")[0].strip() for line in (root / "exclude.txt").read_text().splitlines()} - {""}
    assert {o["path"] for o in lists["outliers"]} <= excluded and not any(p.startswith("test/") for p in excluded)
    assert {p for leak in faults["leaks"] for p in leak if p.startswith("train/")} <= excluded
    # The audit moved nothing; the list, set as data.exclude, leaves those images out of the next scan.
    from components.features.extraction import plan_extraction

    assert all((config.data.root / p).is_file() for p in excluded)
    plan = plan_extraction(load_config(root / "params.yaml", ["data.exclude=exclude.txt"]))
    kept = {r.relpath for split in plan.splits.values() for r in split.records}
    assert not kept & excluded and len(kept) == counts["images"] - len(excluded)


@pytest.mark.e2e
def test_audit_is_logged_to_mlflow(faulty):
    from components.tracking import setup_mlflow

    _, config, _, lists = faulty
    client, experiment = setup_mlflow(config, create=False)
    (run, *_) = client.search_runs([experiment], "tags.ffx_kind = 'audit'")
    assert run.data.metrics["audit_leaks"] == lists["counts"]["leaks"]
    logged = {a.path for folder in (config.metrics.dir.name, config.reports.dir.name)
              for a in client.list_artifacts(run.info.run_id, f"audit/{folder}")}
    assert logged == {f"audit/{config.metrics.dir.name}/audit.json", f"audit/{config.reports.dir.name}/audit.json",
                      f"audit/{config.reports.dir.name}/audit.html"}
    assert run.data.metrics["audit_label_model_accuracy"] == lists["counts"]["label_model_accuracy"]


@pytest.mark.parametrize("setting, key", [
    ("audit.label_method=loss", "audit.label_method"),
    ("audit.k=0", "audit.k"),
    ("audit.duplicate_radius=1.5", "audit.duplicate_radius"),
    ("audit.drift_quantile=-0.1", "audit.drift_quantile"),
    ("audit.folds=1", "audit.folds"),
    ("audit.label_features=pixels", "audit.label_features"),
    ("audit.label_c=0", "audit.label_c"),
])
def test_bad_audit_params_name_the_key(tmp_path, setting, key):
    write_params(tmp_path)
    with pytest.raises(ConfigError, match=f"'{key}'") as error:
        load_config(tmp_path / "params.yaml", [setting])
    assert "\n" not in str(error.value)


def test_bad_param_from_the_command_line_is_one_line(tmp_path):
    from conftest import assert_one_line_error

    write_params(tmp_path)
    assert_one_line_error(run_ffx(tmp_path, "audit", "--set", "audit.k=0"), "audit.k")


def test_a_missing_exclusion_list_is_named(tmp_path):
    from components.errors import FFXError
    from components.features.extraction import plan_extraction

    make_dataset(tmp_path / "data")
    write_params(tmp_path, data={"exclude": "absent.txt"})
    with pytest.raises(FFXError, match="absent.txt: exclusion list not found"):
        plan_extraction(load_config(tmp_path / "params.yaml"))


@pytest.mark.e2e
def test_evaluate_quotes_an_audit_of_these_features_and_leaves_out_a_stale_one(extracted_project):
    """ffx evaluate reads metrics/audit.json when `ffx audit` wrote it for these feature files (here: one with two
    leaks): the card quotes it and a line warns. One written for other data (another feature key) is not quoted
    and warns of nothing: one note says it is stale; so does a fine-tuning decision made for another head. A search of its own: a copy of `tiny_run` would share that
    run's MLflow artifact folder (the experiment records its path)."""
    root = extracted_project
    assert run_ffx(root, "tune", "--set", "tuner.max_trials=1").returncode == 0
    config = load_config(root / "params.yaml")
    counts = {"images": 48, "label_issues": 1, "leaks": 2, "near_duplicates": 0, "outliers": 3,
              "features": features_content_key(config)}
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "audit.json").write_text(json.dumps(counts))
    result = run_ffx(root, "evaluate")
    assert result.returncode == 0, result.stderr
    assert "warning: the audit found 2 near-duplicate pair(s) across splits" in result.stderr
    card = (root / "reports" / "model_card.md").read_text()
    assert "1 probable label issue(s), 2 near-duplicate pair(s) across splits" in card and "**Leak:**" in card

    (root / "metrics" / "audit.json").write_text(json.dumps(dict(counts, features="made-from-other-images")))
    decision = root / "models" / "finetuned" / "finetune.json"  # a decision made for another head
    decision.parent.mkdir(parents=True, exist_ok=True)
    decision.write_text(json.dumps({"enabled": False, "kept": "head", "head_sha1": "0" * 40, "settings": "other"}))
    result = run_ffx(root, "evaluate")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr and "near-duplicate" not in result.stderr
    assert "audit.json: written for other feature files" in result.stderr and "(stale); not quoted" in result.stderr
    assert "finetune.json: made for another head or other finetune settings (stale)" in result.stderr
    card = (root / "reports" / "model_card.md").read_text()
    assert "**Leak:**" not in card and "near-duplicate pair(s)" not in card and "Data audit: none yet" in card


@pytest.mark.e2e
def test_drift_is_the_share_of_a_folders_images_outside_the_training_features(faulty, tmp_path):
    from conftest import COLOURS, make_image

    root, config, _, _ = faulty
    for index in range(20):  # like train (blue, red) and unlike it (green, a class it never saw)
        make_image(tmp_path / "alike" / f"{index}.jpg", COLOURS[("blue", "red")[index % 2]], (40, 36), 900 + index)
        make_image(tmp_path / "unlike" / f"{index}.jpg", COLOURS["green"], (40, 36), 900 + index)
    alike, unlike = (json.loads(run_ffx(root, "audit", "--json", "--quiet", "--drift", str(tmp_path / name)).stdout)
                     ["drift"] for name in ("alike", "unlike"))
    assert alike["images"] == unlike["images"] == 20 and "OutOfDistribution" in unlike["method"]
    assert alike["share"] <= 0.25 < 0.75 <= unlike["share"], (alike, unlike)


def test_label_model_finds_flips_in_separable_features_and_reports_its_accuracy():
    from components.audit.labels import find_label_issues

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 100)
    features = rng.normal(size=(200, 64)).astype(np.float32) + 3.0 * labels[:, None] * (np.arange(64) < 8)
    flipped = rng.choice(200, 8, replace=False)
    given = labels.copy()
    given[flipped] = 1 - given[flipped]
    issues = find_label_issues(features, given, 5, 0.001, "prune_by_noise_rate", 0)
    assert set(issues.ranked[:8].tolist()) == set(flipped.tolist())
    assert issues.accuracy(given) == pytest.approx((issues.likely == given).mean()) and issues.accuracy(given) < 1


def test_a_stronger_penalty_gives_less_confident_probabilities():
    from components.audit.labels import out_of_fold_probabilities

    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 50)
    features = rng.normal(size=(100, 32)).astype(np.float32) + 2.0 * labels[:, None] * (np.arange(32) < 4)
    weak, strong = (out_of_fold_probabilities(features, labels, 5, c, 0) for c in (1.0, 1e-4))
    assert np.abs(strong - 0.5).mean() < 0.5 * np.abs(weak - 0.5).mean()


@pytest.mark.parametrize("features", ["search", "space"])
def test_the_label_model_reads_the_features_audit_label_features_names(tmp_path, features):
    from components.audit.findings import label_features

    write_params(tmp_path)
    settings = load_config(tmp_path / "params.yaml", [f"audit.label_features={features}"]).audit
    stored, space = np.zeros((3, 8)), np.ones((3, 2))
    assert label_features(settings, stored, space) is {"search": stored, "space": space}[features]


def test_report_shows_given_and_likely_label_with_their_probabilities_surest_first(tmp_path):
    from components.audit.html import write_audit_html

    issue = {"path": "a.jpg", "split": "train", "label": "cat", "likely": "dog", "neighbours": []}
    lists = {"counts": {"label_model_accuracy": 0.9}, "leaks": [], "near_duplicates": [], "outliers": [],
             "label_issues": [dict(issue, score=0.02, likely_probability=0.98),
                              dict(issue, path="b.jpg", score=0.3, likely_probability=0.7)]}
    page = write_audit_html(tmp_path / "audit.html", lists, tmp_path).read_text()
    assert "label_model_accuracy: <b>0.9</b>" in page
    surest, next_one = "given cat (p 0.02) → likely dog (p 0.98)", "given cat (p 0.30) → likely dog (p 0.70)"
    assert page.index(surest) < page.index(next_one)
