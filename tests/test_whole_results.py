"""Nothing lost at any kill, no foreign state taken: a pair is complete only once its files are, one writer per
folder, a resumed run checks its config and its checkpoints, damaged records get one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from experiments.run_record import FolderLock
from experiments.runner import main
from foundation import results_io
from foundation.schema import ConfigError
from optimizers.dsgd import DSGD
from tests.helpers.paths import REPO_ROOT
from tests.helpers.runs import SETS, crash_once, long_tiny, manifest_of, run, same_results, write_config

PAIRS = ["dinno", "dsgd", "dsgt", "centralized"]


def run_killed_after(cfg_path, out, file_name: str) -> subprocess.CompletedProcess:
    """A run that kill -9s itself right after ``file_name`` is in place (the NNDT_KILL_AFTER_WRITE hook)."""
    env = dict(os.environ, NNDT_KILL_AFTER_WRITE=file_name)
    return subprocess.run([sys.executable, "experiments/run.py", str(cfg_path), "--output-dir", str(out), "--quiet",
                           *SETS], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def refused_with_one_line(capsys, args, *words) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    return err[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    cfg_path = write_config(folder, long_tiny(rounds=40))
    assert run(cfg_path, folder / "out") == 0
    return cfg_path, folder / "out"


# ----------------------------------------------------------------- a pair is complete only with its files

@pytest.mark.integration
@pytest.mark.parametrize("killed_after", ["dsgd_results.pt", "dsgd_final_params.pt"])
def test_a_kill_while_a_finished_pair_writes_its_files_trains_it_again_on_resume(reference, tmp_path, killed_after):
    cfg_path, ref = reference
    out = tmp_path / "out"
    done = run_killed_after(cfg_path, out, killed_after)
    assert done.returncode == -9, done.stderr[-2000:]
    statuses = {p["problem_name"]: p["status"] for p in manifest_of(out)["pairs"]}
    assert statuses["dinno"] == "completed" and statuses["dsgd"] == "running"  # not completed: files unfinished
    assert main(["--resume", str(out), "--quiet"]) == 0
    manifest = manifest_of(out)
    assert all(p["status"] == "completed" for p in manifest["pairs"])
    for pair in manifest["pairs"]:  # each file as recorded, size and checksum
        assert results_io.check_files(out, pair["files"]) is None
        assert {f"{pair['problem_name']}_results.pt", f"{pair['problem_name']}_final_params.pt"} <= set(pair["files"])
    same_results(ref, out, PAIRS)


def test_a_finished_pair_whose_files_went_missing_trains_again(reference, tmp_path, capsys):
    _, ref = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / "dsgd_metrics.csv").unlink()
    with open(out / "dsgt_final_params.pt", "r+b") as fh:  # one flipped byte: not the file the run wrote
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    capsys.readouterr()
    assert main(["--resume", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "pair dsgd: dsgd_metrics.csv is missing; it trains again" in err
    assert "pair dsgt: dsgt_final_params.pt is not the file the run wrote" in err
    same_results(ref, out, PAIRS)


# --------------------------------------------------------------------------------- one writer per folder

@pytest.mark.integration
def test_two_runs_started_at_once_into_one_folder_one_is_refused(tmp_path):
    cfg_path = write_config(tmp_path, long_tiny(rounds=30))
    out = tmp_path / "shared"
    cmd = [sys.executable, "experiments/run.py", str(cfg_path), "--output-dir", str(out), "--quiet", *SETS]
    procs = [subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and ("another run is writing" in refused[0] or "not empty" in refused[0]), refused
    manifest = manifest_of(out)
    assert manifest["status"] == "completed"
    for pair in manifest["pairs"]:
        assert results_io.check_files(out, pair["files"]) is None


def test_a_folder_lock_names_its_holder_and_ends_with_its_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.'); from pathlib import Path; "
        "from experiments.run_record import FolderLock; "
        f"lock = FolderLock(Path({str(tmp_path)!r})); lock.acquire('x'); print('locked', flush=True); time.sleep(60)")],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=rf"another run is writing into {tmp_path} \(pid {holder.pid} on "):
        FolderLock(tmp_path).acquire("output folder")
    holder.kill()
    holder.wait()
    lock = FolderLock(tmp_path)  # a dead holder leaves no lock behind
    lock.acquire("output folder")
    lock.release()


# -------------------------------------------------------------------------- a run knows its config

def crashed_run(tmp_path, monkeypatch, seed: int = 1, name: str = "out"):
    """A run whose dsgd pair crashed at round 25 (checkpoint at round 20); the others finished."""
    cfg = long_tiny(rounds=40)
    cfg["experiment"]["seed"] = seed
    cfg_path = write_config(tmp_path, cfg, f"cfg_{name}.yaml")
    crash_once(monkeypatch, DSGD, 25)
    out = tmp_path / name
    assert run(cfg_path, out) == 1
    monkeypatch.undo()
    assert (out / "dsgd_checkpoint.pt").is_file()
    return out


def test_resume_refuses_a_config_yaml_edited_after_the_crash_but_takes_more_rounds(tmp_path, monkeypatch, capsys):
    out = crashed_run(tmp_path, monkeypatch)
    original = (out / "config.yaml").read_text()
    cfg = yaml.safe_load(original)
    cfg["problem_configs"]["problem2"]["optimizer_config"]["alpha0"] = 0.5
    cfg["experiment"]["graph"]["num_nodes"] = 5
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    capsys.readouterr()
    line = refused_with_one_line(capsys, ["--resume", str(out)], "config.yaml is not the run's config",
                                 "problem_configs.problem2.optimizer_config.alpha0", "experiment.graph.num_nodes",
                                 "only outer_iterations")
    assert "Traceback" not in line
    cfg = yaml.safe_load(original)
    cfg["problem_configs"]["problem2"]["optimizer_config"]["outer_iterations"] = 50  # allowed: more rounds
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["--resume", str(out), "--quiet"]) == 0
    dsgd = next(p for p in manifest_of(out)["pairs"] if p["problem_name"] == "dsgd")
    assert dsgd["status"] == "completed" and dsgd["rounds_completed"] == 50


# ---------------------------------------------------------------------- a checkpoint knows its run

def test_resume_refuses_another_runs_or_a_damaged_checkpoint(tmp_path, monkeypatch, capsys):
    out = crashed_run(tmp_path, monkeypatch, seed=1, name="mine")
    other = crashed_run(tmp_path, monkeypatch, seed=2, name="other")
    own = (out / "dsgd_checkpoint.pt").read_bytes()
    shutil.copy(other / "dsgd_checkpoint.pt", out / "dsgd_checkpoint.pt")
    capsys.readouterr()
    refused_with_one_line(capsys, ["--resume", str(out)], "belongs to another run", "seed 2", "this run's 1",
                          "delete")
    damaged = bytearray(own)
    damaged[len(damaged) // 2] ^= 0x01  # one bit in the payload
    (out / "dsgd_checkpoint.pt").write_bytes(bytes(damaged))
    refused_with_one_line(capsys, ["--resume", str(out)], "dsgd_checkpoint.pt", "delete")
    (out / "dsgd_checkpoint.pt").write_bytes(b"not a checkpoint")
    refused_with_one_line(capsys, ["--resume", str(out)], "cannot be read", "delete")
    (out / "dsgd_checkpoint.pt").write_bytes(own)
    assert main(["--resume", str(out), "--quiet"]) == 0


# ------------------------------------------------------------------- damaged records and dead folders

@pytest.mark.parametrize("damage,words", [
    (lambda text: text[:len(text) // 2], ["manifest.json cannot be read", "truncated"]),
    (lambda text: json.dumps({**json.loads(text), "pairs": [{"problem_name": "dinno"}]}),
     ["pair dinno has status None", "damaged"]),
    (lambda text: json.dumps({**json.loads(text), "pairs": "none"}), ["no list of pairs"]),
    (lambda text: "[1, 2]", ["not a run manifest"]),
])
def test_a_damaged_manifest_is_refused_with_one_line(reference, tmp_path, capsys, damage, words):
    _, ref = reference
    out = tmp_path / "out"
    shutil.copytree(ref, out)
    (out / "manifest.json").write_text(damage((out / "manifest.json").read_text()))
    capsys.readouterr()
    refused_with_one_line(capsys, ["--resume", str(out)], *words)


def test_a_folder_that_stops_taking_writes_ends_the_run_with_one_line_and_says_why(tmp_path, monkeypatch, capsys):
    cfg_path = write_config(tmp_path, long_tiny(rounds=40))
    original = results_io.torch_save

    def read_only(obj, path):
        if str(path).endswith("_checkpoint.pt") and "dsgd" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return original(obj, path)

    monkeypatch.setattr(results_io, "torch_save", read_only)
    out = tmp_path / "out"
    capsys.readouterr()
    assert run(cfg_path, out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write into {out}: Read-only file system; the run stops"], err
    manifest = manifest_of(out)
    assert manifest["status"] == "failed" and "Read-only file system" in manifest["error"]


def test_resume_removes_the_partial_files_of_killed_writes(tmp_path, monkeypatch, capsys):
    out = crashed_run(tmp_path, monkeypatch)
    stale = [out / ".dsgd_results.tmp-4242.pt", out / ".manifest.tmp-77.json"]
    for path in stale:
        path.write_bytes(b"half a file")
    capsys.readouterr()
    assert main(["--resume", str(out)]) == 0  # notes are not quiet
    assert not any(path.exists() for path in stale)
    assert "removed .dsgd_results.tmp-4242.pt" in capsys.readouterr().err
    assert not list(out.glob(".*.tmp-*"))


def test_checkpoints_record_their_run_and_resume_checks_it_in_one_process(tmp_path, monkeypatch):
    out = crashed_run(tmp_path, monkeypatch)
    saved = torch.load(out / "dsgd_checkpoint.pt", weights_only=True)
    manifest = manifest_of(out)
    assert saved["identity"] == {"config_sha256": manifest["config_sha256"], "seed": 1, "pair": "dsgd", "round": 20}
    assert len(saved["sha256"]) == 64 and saved["payload"].dtype == torch.uint8
    assert main(["--resume", str(out), "--quiet"]) == 0


def test_only_rank_0_writes_the_manifest_of_a_resumed_run(tmp_path):
    """Under torchrun every rank resumes from the folder, but only rank 0 writes into it: another rank's
    manifest write (and heartbeat) raced rank 0's clean-up of half-written files and could overwrite its
    manifest with a stale copy."""
    import argparse
    from types import SimpleNamespace

    from experiments.run_record import Interrupts
    from experiments.runner import open_record

    manifest = {"status": "failed", "pairs": [{"problem_name": "dsgd", "alg_name": "dsgd", "status": "running"}]}
    path = tmp_path / "manifest.json"
    results_io.write_json(path, manifest)
    before = path.read_bytes()
    args = argparse.Namespace(overrides=[], pairs=None)
    cfg = {"experiment": {"name": "x"}}
    for writer, changes in ((False, False), (True, True)):
        record = open_record(args, cfg, None, None, [], tmp_path, json.loads(before), SimpleNamespace(writer=writer),
                             Interrupts())
        record.stop_heartbeat()
        assert (path.read_bytes() != before) == changes
        assert (record.path is not None) == writer
