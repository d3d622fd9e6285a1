"""`plop_core.errors`: real exceptions (raised by the real libraries, not constructed by hand where the
library can raise them here) map to one line naming the problem and the fix, and to the right exit status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from plop_core.errors import exit_status, explain


def _raised(fn):
    try:
        fn()
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("did not raise")


def test_disk_full_is_named_with_the_fix():
    e = _raised(lambda: Path("/dev/full").write_text("x" * 10))
    assert explain(e).startswith("no space left on the device") and "(--out / outputs.root)" in explain(e)
    assert exit_status(e) == 2


def test_permission_denied_names_the_path():
    e = _raised(lambda: Path("/sys/plop-probe").write_text("x"))
    assert explain(e) == ("permission denied (/sys/plop-probe); use a folder you can write (--out / outputs.root) "
                          "or fix its permissions")


def test_damaged_safetensors_says_how_to_repair(tmp_path, llama_dir):
    from safetensors import safe_open

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\xff" * 8 + (llama_dir / "model.safetensors").read_bytes()[8:64])
    e = _raised(lambda: safe_open(str(bad), "pt"))
    assert "a weights file is damaged or truncated" in explain(e) and "plop assets verify NAME" in explain(e)
    assert exit_status(e) == 2


def test_json_yaml_and_scorer_errors():
    j = _raised(lambda: json.loads('{"a": }'))
    assert explain(j) == "not valid JSON at line 1, column 7 (Expecting value); fix or regenerate the file"
    y = _raised(lambda: yaml.safe_load("a: [1\nb: 2"))
    assert explain(y).startswith("not valid YAML at line 2, column 2")
    from plop_core.nfn import NonFiniteActivationError

    n = NonFiniteActivationError("non-finite values (NaN/inf) in the input or output of module model.layers.0.mlp")
    assert explain(n).endswith("module model.layers.0.mlp") and exit_status(n) == 2


def test_interrupt_and_internal_errors():
    assert exit_status(KeyboardInterrupt()) == 130
    e = _raised(lambda: 1 / 0)
    assert explain(e).startswith("internal error: ZeroDivisionError: division by zero; rerun with --debug")
    assert exit_status(e) == 1


def test_validation_error_names_the_field():
    from pydantic import ValidationError

    from plop_core.config import SamplingConfig

    with pytest.raises(ValidationError) as info:
        SamplingConfig(n_samples=0)
    assert explain(info.value) == ("invalid SamplingConfig: n_samples: Input should be greater than or equal to 1 "
                                   "(got 0)")


def test_units_failed_is_two_lines_naming_each_unit_and_the_summary():
    from plop_core.errors import UnitsFailed

    failed = [{"unit": f"score m{i} on t", "error": f"RuntimeError: boom {i}\nsecond line"} for i in range(4)]
    e = UnitsFailed(failed, 10, "/r/sweeps/s/summary.md")
    assert explain(e).splitlines() == [
        "4 of 10 unit(s) failed: score m0 on t: RuntimeError: boom 0 second line; score m1 on t: RuntimeError: "
        "boom 1 second line; score m2 on t: RuntimeError: boom 2 second line; and 1 more",
        "partial results: 6 unit(s) written, summary /r/sweeps/s/summary.md; rerun the same command to retry only "
        "the failed units"]
    assert exit_status(e) == 1


def test_full_sqlite_store_is_no_space():
    import sqlite3

    e = sqlite3.OperationalError("database or disk is full")
    assert explain(e).startswith("no space left on the device (the MLflow SQLite store)") and exit_status(e) == 2


def test_sigterm_is_terminated_status_143():
    from prefect.exceptions import TerminationSignal

    from plop_core.errors import Terminated

    for e in (Terminated("signal 15"), TerminationSignal(15)):
        assert explain(e).startswith("terminated (SIGTERM); finished results are kept") and exit_status(e) == 143


def test_a_signal_surfacing_inside_c_code_is_still_the_signal():
    from plop_core.errors import Terminated

    try:
        try:
            raise Terminated("signal 15")
        except BaseException as sig:
            raise SystemError("<built-in method __new__> returned a result with an exception set") from sig
    except SystemError as e:
        assert explain(e).startswith("terminated (SIGTERM)") and exit_status(e) == 143
