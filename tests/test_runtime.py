"""extract.precision: auto resolves to the precision native on the machine, once, when params are read."""
import pytest
from conftest import write_params

from components import runtime
from components.config import load_config

AMX = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"avx2", "fma"})


@pytest.mark.parametrize("flags, gpu, expected", [
    (AMX, False, "bfloat16"), (AVX512_BF16, False, "bfloat16"), (AVX2, False, "float32"), (AVX2, True, "bfloat16"),
    (frozenset(), False, "float32")])
def test_auto_is_bfloat16_only_where_it_is_native(flags, gpu, expected):
    assert runtime.resolve_precision("auto", flags=flags, gpu=gpu) == expected


@pytest.mark.parametrize("requested", ["float32", "bfloat16"])
def test_an_explicit_precision_stands_on_any_machine(requested):
    for flags in (AMX, AVX2):
        assert runtime.resolve_precision(requested, flags=flags, gpu=False) == requested


@pytest.mark.parametrize("flags, expected", [(AMX, "bfloat16"), (AVX2, "float32")])
def test_the_config_holds_the_resolved_precision(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.setattr(runtime, "gpu_visible", lambda: False)
    config = load_config(write_params(tmp_path, extract={"precision": "auto"}))
    assert config.extract.precision == expected
    assert config.section("extract")["precision"] == expected  # what search keys and MLflow params record


def test_validating_params_imports_no_tensorflow(tmp_path):
    """Reading params (precision auto included) is instant and quiet: TensorFlow is imported by the stage, after
    quiet_tensorflow, never by the config."""
    import subprocess
    import sys

    params = write_params(tmp_path, extract={"precision": "auto"})
    code = (f"import sys; from components.config import load_config; load_config({str(params)!r}); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert found == "[]"
