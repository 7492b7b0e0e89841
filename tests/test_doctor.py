"""``sgdlab doctor``: execution paths, compiler, kernel cache and its checks; exit status 0 when
healthy."""

from __future__ import annotations

import os

import pytest

from sgdlab.cli import main
from sgdlab.optim import native

needs_compiler = pytest.mark.skipif(native.compiler() is None or not hasattr(os, "geteuid"),
                                    reason="needs a C compiler and POSIX owners and modes")


@pytest.fixture
def cache(fresh_native):
    return fresh_native


def doctor(capsys) -> tuple[int, str]:
    status = main(["doctor"])
    return status, capsys.readouterr().out


@needs_compiler
def test_a_healthy_machine_reports_the_c_loop_and_its_cache_and_exits_0(cache, capsys):
    status, out = doctor(capsys)
    assert status == 0, out
    assert str(cache) in out and native.compiler() in out
    assert "stepped correctly" in out
    assert "cpu      float32   C loop" in out
    assert out.rstrip().endswith("healthy")
    status, out = doctor(capsys)  # now with the test kernel in the cache
    libraries = list(cache.glob("step_*.so"))
    assert libraries and f"{len(libraries)} libraries, {len(libraries)} verified" in out


@needs_compiler
def test_a_cache_others_can_write_is_reported_and_exits_1(cache, capsys):
    cache.mkdir(parents=True)
    os.chmod(cache, 0o777)
    status, out = doctor(capsys)
    assert status == 1
    assert "can be written by other users (mode 777)" in out
    assert "using instead" in out
    assert "the configured cache is not used" in out


@needs_compiler
def test_a_damaged_library_is_listed_as_to_be_compiled_again(cache, capsys):
    assert doctor(capsys)[0] == 0
    path = next(cache.glob("step_*.so"))
    damaged = path.with_suffix(".tmp")
    damaged.write_bytes(path.read_bytes()[:1000])
    os.chmod(damaged, 0o500)
    os.replace(damaged, path)
    native._kernels.clear()
    status, out = doctor(capsys)
    assert f"{path.name}: damaged" in out and "compiled again, not loaded" in out
    assert status == 0  # reported; the next load compiles it again


def test_with_sgdlab_native_0_the_c_path_is_off_and_that_is_healthy(cache, capsys, monkeypatch):
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    status, out = doctor(capsys)
    assert status == 0
    assert "off: SGDLAB_NATIVE=0" in out
    assert not cache.exists()  # nothing compiled, nothing created
    assert "cpu      float32   Inductor for groups of 1,048,576 elements or more" in out


def test_without_a_compiler_the_c_path_is_reported_broken(cache, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    status, out = doctor(capsys)
    assert status == 1
    assert "the C path does not run: unavailable: NoCompiler" in out
    assert "cpu      float32   Inductor" in out
