"""What stores and registered models made by earlier versions of ffx get today (components/migrations.py)."""
import subprocess
import sys
import textwrap

import pytest

from components.errors import ModelNotFoundError


def _model_with_its_own_package(folder, module: str):
    """An MLflow model from code whose own copy of a `components` package has one module, `module`, that its entry
    imports, saved by a process where today's package is not imported (as an earlier ffx saved its versions)."""
    code = folder / "code" / "components"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / f"{module}.py").write_text(textwrap.dedent("""
        import mlflow.pyfunc

        class Classifier(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input):
                return model_input
        """))
    entry = folder / "entry.py"
    entry.write_text(f"import mlflow\nfrom components.{module} import Classifier\nmlflow.models.set_model(Classifier())\n")
    save = (f"import mlflow; mlflow.pyfunc.save_model({str(folder / 'model')!r}, python_model={str(entry)!r}, "
            f"code_paths=[{str(code)!r}])")
    subprocess.run([sys.executable, "-c", save], cwd=folder, check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(folder), "PYTHONPATH": str(code.parent)})
    return folder / "model"


def test_a_version_whose_code_is_the_flat_package_of_an_earlier_ffx_is_one_line_saying_how_to_serve_it(tmp_path):
    from components.model.registry import load_model_version

    model = _model_with_its_own_package(tmp_path, "classifier")  # components/model/classifier.py today
    with pytest.raises(ModelNotFoundError, match="registered by an earlier ffx") as raised:
        load_model_version(str(model))
    assert "mlflow models serve" in str(raised.value) and "\n" not in str(raised.value)


def test_a_version_missing_another_module_is_not_taken_for_one_of_an_earlier_ffx():
    from components.migrations import flat_layout_model_error

    with pytest.raises(ModuleNotFoundError) as raised:
        import not_a_module_of_ffx  # noqa: F401
    assert flat_layout_model_error(raised.value, "models:/x/1") is None
    ours = ModuleNotFoundError("No module named 'components.classifier'", name="components.classifier")
    assert isinstance(flat_layout_model_error(ours, "models:/x/1"), ModelNotFoundError)
