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


def _exits(main, capsys, debug=lambda: False):
    with pytest.raises(SystemExit) as stop:
        runtime.run_entry(main, "stopped by SIGTERM; run it again", debug)
    return stop.value.code, capsys.readouterr().err


def _raise(exc):
    def main():
        raise exc
    return main


def test_an_entry_prints_bad_input_and_a_full_disk_as_one_line(capsys, tmp_path):
    import errno

    from components.errors import FFXError

    assert _exits(_raise(FFXError("params: 'x' is wrong")), capsys) == (2, "error: params: 'x' is wrong\n")
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.h5"))
    try:  # a full disk behind another library's exception, as KerasTuner and MLflow raise it
        try:
            raise full
        except OSError as inner:
            raise RuntimeError("could not save the trial") from inner
    except RuntimeError as wrapped:
        code, err = _exits(_raise(wrapped), capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'a.h5'}: no space left on device") and err.count("\n") == 1


def test_an_entry_stopped_by_sigterm_says_so_and_exits_143(capsys):
    import os
    import signal

    def main():
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        assert _exits(main, capsys) == (143, "stopped by SIGTERM; run it again\n")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_an_entry_keeps_the_traceback_of_a_bug_and_of_anything_under_debug():
    from components.errors import FFXError

    with pytest.raises(KeyError):
        runtime.run_entry(_raise(KeyError("bug")), "stopped")
    with pytest.raises(FFXError):
        runtime.run_entry(_raise(FFXError("bad input")), "stopped", debug=lambda: True)
