"""Nothing a user owns is lost: run directories, locks, checkpoints, signals, full disks.

Each test drives `mlmix run` (or `mlmix fit`) the way a user does, through the CLI or a
subprocess, and checks the message, the exit status and that no file was lost.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

import mlmix.outputs
import mlmix.run as runner
from mlmix.checkpoint import load_checkpoint, load_latest_checkpoint, previous_path
from mlmix.cli import main as cli_main
from mlmix.config import dump_toml
from mlmix.errors import ConfigurationError
from mlmix.rundir import LOCK, MARKER
from test_run import _kill_at, si_config, write_config

ROOT = Path(__file__).resolve().parents[1]


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _same_trajectory(a: Path, b: Path) -> None:
    fa, fb = read(a, ":"), read(b, ":")
    assert [f.info["step"] for f in fa] == [f.info["step"] for f in fb]
    for x, y in zip(fa, fb):
        np.testing.assert_allclose(x.positions, y.positions, atol=1e-9, rtol=0)
        np.testing.assert_allclose(x.get_momenta(), y.get_momenta(), atol=1e-9, rtol=0)


def _mlmix(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mlmix", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"mlmix exited early ({proc.returncode}): "
                                 f"{proc.stderr.read()}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _log_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line and line[0] != "#")


# --------------------------------------------------------------------------- overwrite


def test_overwrite_refuses_a_folder_mlmix_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("a week of notes")
    path = write_config(tmp_path, si_config(steps=5))
    assert cli_main(["run", str(path), "--output", str(mine), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert f"--overwrite refused: {mine} was not made by mlmix" in err
    assert (mine / "keep.txt").read_text() == "a week of notes"
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]


def test_overwrite_of_the_config_folder_keeps_the_config(tmp_path, capsys):
    cfg = si_config(steps=5)
    cfg["output"]["directory"] = "."
    path = write_config(tmp_path, cfg)
    before = _files(tmp_path)
    assert cli_main(["run", str(path), "--overwrite"]) == 2
    assert "was not made by mlmix" in capsys.readouterr().err
    assert _files(tmp_path) == before


def test_overwrite_removes_only_what_mlmix_wrote(tmp_path):
    path = write_config(tmp_path, si_config(steps=10))
    run_dir = tmp_path / "run-run"
    runner.run(path)
    assert (run_dir / MARKER).is_file()
    (run_dir / "notes.txt").write_text("mine")
    (run_dir / "analysis").mkdir()
    (run_dir / "analysis" / "plot.py").write_text("print(1)")
    old_summary = (run_dir / "summary.json").read_text()
    with pytest.raises(ConfigurationError, match="--resume to continue its run, --overwrite"):
        runner.run(path)
    runner.run(path, overwrite=True)
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert (run_dir / "analysis" / "plot.py").read_text() == "print(1)"
    assert (run_dir / "summary.json").read_text() != old_summary  # a new run
    assert read(run_dir / "trajectory.extxyz", -1).info["step"] == 10
    assert len(read(run_dir / "trajectory.extxyz", ":")) == 3  # not appended to the old one


# --------------------------------------------------------------------------- lock


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_killed_runs_lock_does_not_block(tmp_path):
    cfg = si_config(steps=100000)
    cfg["output"].update(trajectory_every=50, log_every=5, checkpoint_every=20)
    path = write_config(tmp_path, cfg)
    run_dir = tmp_path / "run-run"
    proc = _mlmix("run", str(path), cwd=tmp_path)
    try:
        _wait_for(lambda: _log_rows(run_dir / "thermo.log") >= 6, proc)
        for flags in (["--resume"], ["--overwrite"]):
            second = _mlmix("run", str(path), *flags, cwd=tmp_path)
            out, err = second.communicate(timeout=120)
            assert second.returncode == 2, err
            assert "is in use by another mlmix process" in err
        assert proc.poll() is None  # the first run was not disturbed
    finally:
        proc.kill()  # SIGKILL: no chance to clean up, as after a crash
        proc.communicate()
    assert (run_dir / LOCK).exists()  # the stale lock file is still there ...
    step = int(load_checkpoint(run_dir / "checkpoint.npz")["step"])
    cfg["task"]["steps"] = step + 10
    path.write_text(dump_toml(cfg))
    summary = runner.run(path, resume=True)  # ... and does not block the resume
    assert summary["resumed_from_step"] == step and summary["steps"] == step + 10


# --------------------------------------------------------------------------- checkpoints


def _killed_run(tmp_path: Path, monkeypatch, steps: int = 40, at: int = 27):
    """A run killed (no clean-up) during step ``at``, and the same run uninterrupted."""
    path = write_config(tmp_path, si_config(steps=steps))
    runner.run(path, output=tmp_path / "whole")
    with monkeypatch.context() as m:
        _kill_at(m, at)
        with pytest.raises(KeyboardInterrupt):
            runner.run(path, output=tmp_path / "killed")
    return path, tmp_path / "killed"


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch):
    path, run_dir = _killed_run(tmp_path, monkeypatch)
    ckpt = run_dir / "checkpoint.npz"
    assert load_checkpoint(ckpt)["step"] == 20
    assert load_checkpoint(previous_path(ckpt))["step"] == 10
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk elsewhere
    with pytest.warns(RuntimeWarning, match=r"resuming from the previous checkpoint "
                      r"checkpoint.prev.npz \(step 10\)"):
        summary = runner.run(path, output=run_dir, resume=True)
    assert summary["resumed_from_step"] == 10
    _same_trajectory(tmp_path / "whole" / "trajectory.extxyz", run_dir / "trajectory.extxyz")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not really a zip", b"\x00" * 300,
                                     b"\x93NUMPY garbage"],
                         ids=["empty", "fake zip header", "zeros", "npy header"])
def test_a_damaged_checkpoint_without_a_good_one_is_named(tmp_path, monkeypatch, capsys,
                                                          content):
    path, run_dir = _killed_run(tmp_path, monkeypatch)
    (run_dir / "checkpoint.npz").write_bytes(content)
    previous_path(run_dir / "checkpoint.npz").write_bytes(content)
    before = _files(run_dir)
    assert cli_main(["run", str(path), "--output", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {run_dir / 'checkpoint.npz'} is damaged" in err
    assert "start it again with --overwrite" in err
    assert "allow_pickle" not in err and "Traceback" not in err
    assert _files(run_dir) == before


@pytest.mark.parametrize("damage", ["thermo shortened", "trajectory deleted",
                                    "trajectory rewritten"])
def test_output_files_changed_since_the_checkpoint_are_refused(tmp_path, monkeypatch, capsys,
                                                               damage):
    path, run_dir = _killed_run(tmp_path, monkeypatch)
    traj, thermo = run_dir / "trajectory.extxyz", run_dir / "thermo.log"
    if damage == "thermo shortened":
        thermo.write_text(thermo.read_text()[:200])
        name = thermo
    elif damage == "trajectory deleted":
        traj.unlink()
        name = traj
    else:
        text = traj.read_text()
        traj.write_text(text.replace("Si", "Ge", 1))
        name = traj
    before = _files(run_dir)
    assert cli_main(["run", str(path), "--output", str(run_dir), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(name) in err and "--overwrite" in err
    assert _files(run_dir) == before  # nothing continued, nothing cut


def test_steps_below_the_checkpoint_are_refused_and_a_finished_run_is_left_alone(tmp_path,
                                                                              capsys):
    cfg = si_config(steps=20)
    path = write_config(tmp_path, cfg)
    runner.run(path)
    run_dir = tmp_path / "run-run"
    finished = _files(run_dir)
    assert runner.run(path, resume=True)["steps"] == 20  # nothing to do ...
    assert "already finished its 20 steps" in capsys.readouterr().err
    assert _files(run_dir) == finished  # ... and nothing rewritten
    cfg["task"]["steps"] = 10
    path.write_text(dump_toml(cfg))
    assert cli_main(["run", str(path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "task.steps = 10 is below the step of the checkpoint (20)" in err
    assert _files(run_dir) == finished


def test_relaxations_say_what_resumes(tmp_path, capsys):
    cfg = si_config(kind="relax", fmax=0.5)
    for key in ("ensemble", "temperature_K", "steps", "seed"):
        del cfg["task"][key]
    cfg["regions"]["nevery"] = 0
    path = write_config(tmp_path, cfg)
    runner.run(path)
    assert cli_main(["run", str(path), "--resume"]) == 2
    assert "--resume is for MD runs" in capsys.readouterr().err


# --------------------------------------------------------------------------- write errors


def test_a_failing_write_is_one_message_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    path = write_config(tmp_path, si_config(steps=40))
    runner.run(path, output=tmp_path / "whole")
    original = mlmix.outputs._AppendFile.__init__
    writes = []

    class FillingDisk:
        """The file object of an output file on a disk that fills up."""

        def __init__(self, fh):
            self._fh = fh

        def write(self, text):
            writes.append(1)
            if len(writes) > 12:  # frames and rows up to about step 25 fit
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._fh.write(text)

        def __getattr__(self, name):
            return getattr(self._fh, name)

    def on_filling_disk(self, path):
        original(self, path)
        self._fh = FillingDisk(self._fh)

    monkeypatch.setattr(mlmix.outputs._AppendFile, "__init__", on_filling_disk)
    run_dir = tmp_path / "full"
    assert cli_main(["run", str(path), "--output", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device (errno 28, ENOSPC)" in err
    assert f"cannot write {run_dir}/" in err
    assert f"The last checkpoint ({run_dir / 'checkpoint.npz'}) is intact" in err
    assert f"mlmix run {path} --output {run_dir} --resume" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    monkeypatch.setattr(mlmix.outputs._AppendFile, "__init__", original)
    state, used = load_latest_checkpoint(run_dir / "checkpoint.npz")
    assert used.name == "checkpoint.npz" and state["step"] >= 10
    assert cli_main(["run", str(path), "--output", str(run_dir), "--resume"]) == 0
    _same_trajectory(tmp_path / "whole" / "trajectory.extxyz", run_dir / "trajectory.extxyz")


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 400 kB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_keeps_the_checkpoint_and_the_run_resumes(tmp_path, tiny_filesystem,
                                                              capsys):
    cfg = si_config(steps=200)
    cfg["output"].update(trajectory_every=2, log_every=2, checkpoint_every=20)
    path = write_config(tmp_path, cfg)
    run_dir = tiny_filesystem / "run"
    assert cli_main(["run", str(path), "--output", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device (errno 28, ENOSPC)" in err and str(run_dir) in err
    assert "is intact" in err and "--resume" in err
    state, used = load_latest_checkpoint(run_dir / "checkpoint.npz")
    assert used.name == "checkpoint.npz"
    subprocess.run(["mount", "-o", "remount,size=20m", str(tiny_filesystem)], check=True)
    assert cli_main(["run", str(path), "--output", str(run_dir), "--resume"]) == 0
    runner.run(path, output=tmp_path / "whole")
    _same_trajectory(tmp_path / "whole" / "trajectory.extxyz", run_dir / "trajectory.extxyz")


def test_a_read_only_output_folder_is_refused_before_work(tmp_path, tiny_filesystem, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_filesystem)], check=True)
    path = write_config(tmp_path, si_config(steps=5))
    before = _files(tmp_path)
    assert cli_main(["run", str(path), "--output", str(tiny_filesystem / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{tiny_filesystem} is on a read-only file system" in err
    assert _files(tmp_path) == before


# --------------------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize("engine,sig", [("ase", signal.SIGINT), ("ase", signal.SIGTERM),
                                        ("lammps", signal.SIGINT)])
def test_a_signal_writes_a_checkpoint_and_the_run_resumes_exactly(tmp_path, engine, sig):
    cfg = si_config(steps=100000)
    cfg["output"].update(trajectory_every=5, log_every=5, checkpoint_every=1000)
    if engine == "lammps":
        cfg["engine"] = {"kind": "lammps"}
    path = write_config(tmp_path, cfg)
    run_dir = tmp_path / "run-run"
    proc = _mlmix("run", str(path), cwd=tmp_path)
    _wait_for(lambda: _log_rows(run_dir / "thermo.log") >= 4, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"stopped by {sig.name} at step" in lines[0]
    assert f"Resume with: mlmix run {path} --resume" in lines[0]
    step = int(lines[0].split(" at step ")[1].split(";")[0])
    assert load_checkpoint(run_dir / "checkpoint.npz")["step"] == step  # not the last 1000s
    # the stopped run, resumed to step + 12, is the uninterrupted run of step + 12 steps
    cfg["task"]["steps"] = step + 12
    path.write_text(dump_toml(cfg))
    assert cli_main(["run", str(path), "--resume"]) == 0
    cfg["output"]["directory"] = "whole"
    whole = write_config(tmp_path, cfg, "whole.toml")
    assert cli_main(["run", str(whole)]) == 0
    _same_trajectory(tmp_path / "whole" / "trajectory.extxyz", run_dir / "trajectory.extxyz")


# --------------------------------------------------------------------------- fit


def test_fit_never_writes_into_a_folder_it_did_not_make(tmp_path, capsys):
    shipped = ROOT / "examples" / "fit-si"
    before = _files(shipped)
    assert cli_main(["fit", str(ROOT / "examples" / "fit-si.toml")]) == 2
    err = capsys.readouterr().err
    assert f"output directory {shipped} exists and is not empty" in err
    assert "--output" in err
    assert cli_main(["fit", str(ROOT / "examples" / "fit-si.toml"), "--overwrite"]) == 2
    assert "was not made by mlmix" in capsys.readouterr().err
    assert _files(shipped) == before


def test_fit_output_overwrite_and_resume(tmp_path, capsys):
    cfg = {
        "expensive": {"backend": "lammps", "style": "sw", "file": "Si.sw", "species": ["Si"]},
        "structure": {"element": "Si", "crystal": "diamond", "a": 5.431, "repeat": 2},
        "hard": {"n_strains": 5}, "soft": {"n_frames": 6, "interval": 20, "seed": 1},
        "model": {"family": "snap", "twojmax": 4}, "fit": {"alpha": 2e-6},
        "report": {"elastic": False},
        "output": {"directory": "fit", "stem": "si"},
    }
    path = tmp_path / "fit.toml"
    path.write_text(dump_toml(cfg))
    out = tmp_path / "elsewhere"
    assert cli_main(["fit", str(path), "--output", str(out)]) == 0
    assert (out / "si.snapcoeff").is_file() and not (tmp_path / "fit").exists()
    capsys.readouterr()
    assert cli_main(["fit", str(path), "--output", str(out)]) == 2
    assert "--resume to continue its run, --overwrite" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    labels = _files(out / "cache")
    assert cli_main(["fit", str(path), "--output", str(out), "--resume"]) == 0
    assert _files(out / "cache") == labels  # resumed from the cache: nothing relabelled
    assert cli_main(["fit", str(path), "--output", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "si.snapcoeff").is_file()


def test_a_bad_fit_config_leaves_no_folder(tmp_path, capsys):
    path = tmp_path / "fit.toml"
    path.write_text(dump_toml({"expensive": {"backend": "lammps", "style": "sw",
                                             "file": "Si.sw"},
                               "structure": {"element": "Si", "crystal": "diamond",
                                             "a": float("nan")},
                               "model": {"family": "snap"},
                               "output": {"directory": "fit"}}))
    assert cli_main(["fit", str(path)]) == 2
    assert "structure.a: must be a finite number" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.toml"]
