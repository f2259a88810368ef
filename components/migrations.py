"""What stores and registered models made by earlier versions of ffx need to be used today, in one place: each
function names the store it serves, so that it can go when no such store is left."""
from __future__ import annotations

from components.errors import ModelNotFoundError, exception_chain

PACKAGE_PREFIX = "components."  # the modules of the package a registered model carries


def tag_untagged_experiment(client, experiment, tag: str, value: str) -> None:
    """An experiment made before ffx tagged its experiments' kind gets the tag when the project writes to it: the
    MLflow UI reads it to open the experiment on its runs."""
    if experiment.tags.get(tag) != value:
        client.set_experiment_tag(experiment.experiment_id, tag, value)


def flat_layout_model_error(exc: BaseException, reference: str) -> ModelNotFoundError | None:
    """The one-line error for a registered version whose own copy of the code is the flat components/ package of an
    earlier ffx: loaded in this process, beside today's layered package, it fails to import one of its modules
    (ModuleNotFoundError naming `components.X`). None for any other error."""
    missing = next((link for link in exception_chain(exc) if isinstance(link, ModuleNotFoundError)), None)
    if missing is None or not (missing.name or "").startswith(PACKAGE_PREFIX):
        return None
    return ModelNotFoundError(
        f"{reference}: registered by an earlier ffx, whose code (flat components/ modules) cannot load beside "
        "today's package in this process; serve it with `mlflow models serve`, or register the head again "
        "with `ffx evaluate --set registry.promote=always` (docs/serving.md)")
