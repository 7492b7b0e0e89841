"""The C fast path loads only libraries sgdlab compiled itself, and survives any damaged cache.

Issue 16's findings, one test each: a library planted in a cache directory others can write is
never loaded; a truncated library (which crashed Python with SIGBUS inside dlopen) is compiled
again and the step stays right; under umask 002 nothing in the cache is group- or other-writable;
four processes compiling into a cold cache at once, and a full disk, still work. Cases that could
crash or run foreign code run in a child process, so that a crash fails the test instead of
killing pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import sgdlab
from sgdlab.optim import native

pytestmark = pytest.mark.skipif(
    native.compiler() is None or not hasattr(os, "geteuid"),
    reason="needs a C compiler and POSIX owners and modes",
)

# One small tensor, one concatenated with it, one large enough to be updated in place.
SHAPES = [(7,), (5, 3), (70000,)]

# What every child process starts with: the same training run as train() below.
CHILD = """
import json, os, sys, warnings
import torch
import sgdlab
from sgdlab.optim import native
torch.set_num_threads(1)
warnings.simplefilter("always")

def train(**options):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in %r]
    optimizer = sgdlab.SGD(params, lr=0.05, momentum=0.9, **options)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return params

def right(params):
    return all(torch.equal(p, q) for p, q in zip(params, train(foreach=False)))

def c_loop_on():
    return not native._unavailable and all(k is not None for k in native._kernels.values())

def report(**values):
    print("RESULT " + json.dumps(values))
""" % (SHAPES,)


def train(**options) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    optimizer = sgdlab.SGD(params, lr=0.05, momentum=0.9, **options)
    for _ in range(4):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
    return params


def assert_right(params: list[torch.Tensor]) -> None:
    for p, q in zip(params, train(foreach=False)):
        assert torch.equal(p, q)


def spawn(body: str, cache: Path, **env: str) -> subprocess.Popen:
    environment = {**os.environ, "SGDLAB_CACHE_DIR": str(cache), **env}
    environment.pop("SGDLAB_NATIVE", None)
    return subprocess.Popen([sys.executable, "-c", CHILD + textwrap.dedent(body)],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def result(child: subprocess.Popen) -> dict:
    """The child's report; the test fails with its output if it crashed (SIGBUS: -7)."""
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, f"child exited with {child.returncode}\n{out}\n{err}"
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def cached_libraries(directory: Path) -> list[Path]:
    return sorted(directory.glob("step_*.so"))


def mapped_files() -> set[tuple[int, int]]:
    """(device, inode) of every file mapped into this process."""
    mapped = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[4] != "0":
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                mapped.add((os.makedev(major, minor), int(fields[4])))
    return mapped


def replace(path: Path, data: bytes, mode: int = native.LIBRARY_MODE) -> None:
    """Put ``data`` at ``path`` as a new file (the old one may be mapped: never write into it)."""
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


# --- finding 1: a planted library ------------------------------------------------------------------
PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE* f = fopen(getenv("SGDLAB_TEST_MARKER"), "w");
    if (f) { fputs("planted code ran", f); fclose(f); }
}
void sgdlab_step(void) {}  /* the step silently does nothing */
"""


def compile_planted(tmp_path: Path) -> bytes:
    source = tmp_path / "planted.c"
    source.write_text(PLANTED_C)
    built = tmp_path / "planted.so"
    subprocess.run([native.compiler(), "-shared", "-fPIC", "-o", str(built), str(source)],
                   check=True, capture_output=True)
    return built.read_bytes()


def test_a_library_planted_in_a_world_writable_cache_is_never_loaded(fresh_native, tmp_path):
    # The names the kernels get, from a cache of our own...
    train()
    stems = [path.name.rpartition("-")[0] for path in cached_libraries(fresh_native)]
    assert stems  # (two: SGD's first step, without a momentum buffer yet, and the later ones)
    # ...then a cache another user prepared: mode 0777, holding a library under each name, its
    # digest and all, and under the names older versions used.
    planted = compile_planted(tmp_path)
    shared = tmp_path / "shared"
    (shared / "kernels").mkdir(parents=True)
    for directory in (shared, shared / "kernels"):
        os.chmod(directory, 0o777)
    digest = hashlib.sha256(planted).hexdigest()[: native.DIGEST_CHARS]
    for stem in stems:
        for name in (f"{stem}-{digest}.so", f"{stem}.so"):
            replace(shared / "kernels" / name, planted, 0o777)
    marker = tmp_path / "marker"

    found = result(spawn("""
        with warnings.catch_warnings(record=True) as caught:
            params = train()
        used = native.cache_dir()
        report(right=right(params), c_loop=c_loop_on(), used=str(used),
               mode=os.stat(used).st_mode & 0o777, warnings=[str(w.message) for w in caught],
               maps=open("/proc/self/maps").read())
    """, shared, SGDLAB_TEST_MARKER=str(marker)))

    assert not marker.exists()
    assert str(shared) not in found["maps"]
    assert found["right"] and found["c_loop"]
    # cache_dir() names the directory actually used: a fresh private one, not a guessable path.
    assert not found["used"].startswith(str(shared))
    assert f"sgdlab-kernels-{os.geteuid()}" not in found["used"]
    assert found["mode"] == 0o700
    [warning] = found["warnings"]
    assert "not using the kernel cache" in warning and "written by other users" in warning


def test_a_cache_of_another_user_is_never_used(fresh_native, monkeypatch):
    fresh_native.mkdir(parents=True, mode=0o700)
    if os.geteuid() == 0:
        os.chown(fresh_native, 65534, 65534)
    else:  # only root can give a directory away: pretend to be someone else instead
        monkeypatch.setattr(native, "_uid", lambda: os.geteuid() + 1)
    problem = native.directory_problem(fresh_native)
    assert problem is not None and "not to this user" in problem
    if os.geteuid() == 0:
        with pytest.warns(RuntimeWarning, match="not to this user"):
            assert native.cache_dir() != fresh_native


def test_a_directory_above_the_cache_that_others_can_write_disqualifies_it(fresh_native):
    fresh_native.mkdir(parents=True, mode=0o700)
    os.chmod(fresh_native.parent, 0o777)  # anyone could rename "kernels" and put theirs there
    assert "written by other users" in native.directory_problem(fresh_native)
    os.chmod(fresh_native.parent, 0o1777)  # sticky, like /tmp: no one can rename what is ours
    assert native.directory_problem(fresh_native) is None


@pytest.mark.parametrize("private_group", [True, False], ids=["own-group", "shared-group"])
def test_group_write_is_allowed_only_for_the_users_own_group(fresh_native, monkeypatch,
                                                             private_group):
    # User private groups (umask 002 on Fedora/RHEL): a group of one grants no one else anything.
    fresh_native.mkdir(parents=True, mode=0o700)
    os.chmod(fresh_native, 0o770)
    monkeypatch.setattr(native, "_private_group", lambda gid: private_group)
    problem = native.directory_problem(fresh_native)
    if private_group:
        assert problem is None
    else:
        assert "written by other users (mode 770)" in problem


def test_the_cache_is_used_through_its_resolved_path(fresh_native, tmp_path, monkeypatch):
    # A link checked now could point elsewhere later if it stands in a directory others can
    # write: everything is done through the path with links resolved, each directory checked.
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("SGDLAB_CACHE_DIR", str(tmp_path / "link"))
    assert native.cache_dir() == real.resolve() / "kernels"
    params = train()
    assert_right(params)
    assert {found.path.parent for found in native._kernels.values()} == {real.resolve() / "kernels"}


def test_a_missing_cache_is_created_owner_only_and_is_the_one_used(fresh_native):
    assert native.cache_dir() == fresh_native.resolve()
    for directory in (fresh_native, fresh_native.parent):
        assert stat.S_IMODE(os.stat(directory).st_mode) == native.DIRECTORY_MODE


@pytest.mark.parametrize("damage", ["writable-by-others", "symlink", "hard-link", "foreign-owner"])
def test_a_cached_library_that_is_not_ours_alone_is_compiled_again_not_loaded(
        fresh_native, tmp_path, damage):
    if damage == "foreign-owner" and os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    train()
    path = cached_libraries(fresh_native)[0]
    elsewhere = tmp_path / "elsewhere.so"
    shutil.copyfile(path, elsewhere)  # the same bytes: the name's digest matches
    if damage == "writable-by-others":
        replace(path, elsewhere.read_bytes(), 0o777)
    elif damage == "symlink":
        path.unlink()
        path.symlink_to(elsewhere)
    elif damage == "hard-link":
        path.unlink()
        os.link(elsewhere, path)
    else:
        replace(path, elsewhere.read_bytes())
        os.chown(path, 65534, 65534)
    planted = os.lstat(path)
    assert native.library_problem(path) is not None

    native._kernels.clear()
    params = train()

    assert_right(params)
    assert all(found is not None for found in native._kernels.values())
    copy = os.stat(elsewhere)
    assert not {(planted.st_dev, planted.st_ino), (copy.st_dev, copy.st_ino)} & mapped_files()
    assert native.library_problem(path) is None  # compiled again under the same name
    assert os.lstat(path).st_ino != planted.st_ino


# --- finding 2: umask 002 --------------------------------------------------------------------------
def test_under_umask_002_nothing_in_the_cache_is_group_or_other_writable(fresh_native, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("SGDLAB_CACHE_DIR", str(tmp_path / "new" / "deeper"))
    old = os.umask(0o002)
    try:
        params = train()
    finally:
        os.umask(old)
    assert_right(params)
    entries = [tmp_path / "new", *(tmp_path / "new").rglob("*")]
    assert [e for e in entries if e.suffix == ".so"]
    for entry in entries:
        mode = stat.S_IMODE(os.lstat(entry).st_mode)
        assert not mode & 0o022, f"{entry}: {mode:o}"
        assert mode == (native.DIRECTORY_MODE if entry.is_dir() else native.LIBRARY_MODE)


# --- finding 3: a damaged library ------------------------------------------------------------------
@pytest.mark.parametrize("sizes", [[1000, 4000, 8000, 12000], [0, 64]],
                         ids=["sigbus-sizes", "too-short-sizes"])
def test_a_truncated_library_is_compiled_again_and_the_step_stays_right(tmp_path, sizes):
    # Before: sizes 1000-12000 of a real kernel killed Python (SIGBUS inside dlopen); 0 and 64
    # raised OSError and turned the C path off for the whole process. Each size is put in place
    # as a new file (as a copy cut short would be), then a fresh load must rebuild it.
    found = result(spawn(f"""
        train()
        libraries = sorted(native.cache_dir().glob("step_*.so"))
        whole = {{path: path.read_bytes() for path in libraries}}
        outcomes = []
        for size in {sizes!r}:
            for path, data in whole.items():
                cut = path.with_suffix(".tmp")
                cut.write_bytes(data[:size])
                os.chmod(cut, 0o500)
                os.replace(cut, path)
            native._kernels.clear()
            params = train()
            now = sorted(native.cache_dir().glob("step_*.so"))
            rebuilt = len(now) == len(whole) and all(
                native.library_problem(path) is None for path in now)
            outcomes.append(dict(size=size, right=right(params), c_loop=c_loop_on(),
                                 rebuilt=rebuilt))
        report(outcomes=outcomes, libraries=len(libraries))
    """, tmp_path / "cache"))
    assert found["libraries"] >= 1
    for outcome in found["outcomes"]:
        assert outcome == dict(size=outcome["size"], right=True, c_loop=True, rebuilt=True)


def test_a_damaged_library_is_removed_and_replaced_in_this_process(fresh_native):
    train()
    path = cached_libraries(fresh_native)[0]
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF  # same size, one byte wrong
    replace(path, bytes(flipped))
    assert "damaged" in native.library_problem(path)
    native._kernels.clear()
    assert_right(train())
    assert path.read_bytes() == data


# --- 4: what already worked ------------------------------------------------------------------------
@pytest.mark.slow
def test_four_processes_compiling_into_a_cold_cache_at_once_agree(tmp_path):
    # Each child waits until all four have imported torch, then they compile at the same time.
    children = [spawn(f"""
        import pathlib, time
        ready = pathlib.Path({str(tmp_path)!r})
        (ready / "ready-{i}").touch()
        deadline = time.time() + 120
        while len(list(ready.glob("ready-*"))) < 4 and time.time() < deadline:
            time.sleep(0.01)
        with warnings.catch_warnings(record=True) as caught:
            params = train()
        report(params=[p.detach().tolist() for p in params], c_loop=c_loop_on(),
               warnings=[str(w.message) for w in caught])
    """, tmp_path / "cache") for i in range(4)]
    found = [result(child) for child in children]
    reference = [p.detach().tolist() for p in train(foreach=False)]
    for each in found:
        assert each == dict(params=reference, c_loop=True, warnings=[])
    libraries = cached_libraries(tmp_path / "cache" / "kernels")
    assert libraries and all(native.library_problem(path) is None for path in libraries)
    assert not list((tmp_path / "cache" / "kernels").glob(".build-*"))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE as a full disk: Linux")
def test_a_full_disk_gives_one_warning_and_the_slower_path_stays_right(tmp_path):
    # Writes past 8 kB fail (EFBIG, as ENOSPC would): the C source fits, the library does not.
    found = result(spawn("""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.RLIM_INFINITY))
        with warnings.catch_warnings(record=True) as caught:
            params = train()
            params = train()
        report(right=right(params), warnings=[str(w.message) for w in caught],
               libraries=[p.name for p in native.cache_dir().iterdir()])
    """, tmp_path / "cache"))
    assert found["right"]
    [warning] = found["warnings"]
    assert "C optimizer step is unavailable" in warning
    assert found["libraries"] == []  # nothing half-written was left under a library's name


# --- the directory used, and the off switch --------------------------------------------------------
def test_an_uncreatable_cache_falls_back_to_one_private_directory_and_says_so_once(
        fresh_native, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("SGDLAB_CACHE_DIR", str(blocker))  # .../a-file/kernels cannot be made
    with pytest.warns(RuntimeWarning, match="not using the kernel cache .*cannot be created"):
        used = native.cache_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.cache_dir() == used
        params = train()
    assert_right(params)
    assert native.directory_problem(used) is None
    assert stat.S_IMODE(os.stat(used).st_mode) == 0o700
    assert {found.path.parent for found in native._kernels.values()} == {used}


def test_sgdlab_native_0_turns_the_c_loop_off(fresh_native, monkeypatch):
    monkeypatch.setenv("SGDLAB_NATIVE", "0")
    calls = []
    monkeypatch.setattr(native.Plan, "run", lambda *args: calls.append(args))
    assert_right(train())
    assert calls == [] and native._kernels == {}
    assert not fresh_native.exists()  # nothing compiled, nothing cached
