"""Training under faults: non-finite loss / gradient (stop or skip), preemption signals (SIGTERM,
SIGINT) sent to a real training process, and checkpoint writes that fail (full disk)."""
import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from train_helpers import nan_batch_at, state_equal, tiny_args, tiny_model

from sgkernels.train import Trainer, train
from sgkernels.model.checkpoint import read_checkpoint
from sgkernels.runtime import files
from sgkernels.train.cli import main
from sgkernels.train.faults import StopSignals
from sgkernels.train.logger import read_log

ROOT = Path(__file__).resolve().parents[2]


def _opt_state(trainer):
    return trainer.opt.state_dict()["state"]


def _same_state(a: Trainer, b: Trainer) -> bool:
    sa, sb = _opt_state(a), _opt_state(b)
    return (state_equal(a.model.state_dict(), b.model.state_dict())
            and state_equal(a.ema.state_dict(), b.ema.state_dict())
            and sa.keys() == sb.keys() and all(state_equal(sa[k], sb[k]) for k in sa))


def _nan_batch_at(monkeypatch, bad_step: int) -> None:
    """Trainer.batch returns an image with a NaN pixel at 0-based step `bad_step`."""
    monkeypatch.setattr(Trainer, "batch", nan_batch_at(bad_step))


# -- non-finite loss / gradient ----------------------------------------------------------------
def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    _nan_batch_at(monkeypatch, 4)                                   # the 5th step
    args = tiny_args(tmp_path, steps=8, ckpt_every=2, log_every=4)
    with pytest.raises(FloatingPointError) as info:
        train(args, tiny_model())
    message = str(info.value)
    assert "non-finite loss at step 5 " in message, message
    assert "0000004.pt (step 4)" in message and "--on-nonfinite skip" in message
    # the check ran before the step-6 checkpoint: nothing of the bad state was written
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["0000002.pt", "0000004.pt", "latest.pt"]
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert [r["step"] for r in read_log(tmp_path / "log.jsonl")] == [4]  # no NaN row


def test_nonfinite_gradient_with_finite_loss_stops(tmp_path, monkeypatch):
    update = Trainer.update

    def inf_grad_at_step_2(self, loss):
        if self.step == 2:
            next(self.model.parameters()).grad.view(-1)[0] = float("inf")
        return update(self, loss)

    monkeypatch.setattr(Trainer, "update", inf_grad_at_step_2)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 3 \(loss [0-9.]+, "
                       r"grad norm inf\).*no checkpoint was written before it"):
        train(tiny_args(tmp_path, steps=6, log_every=0), tiny_model())
    assert not (tmp_path / "checkpoints").exists()


def test_skip_mode_skips_update_and_ema_and_continues(tmp_path, monkeypatch):
    _nan_batch_at(monkeypatch, 2)                                   # the 3rd step
    trainer = Trainer(tiny_args(tmp_path, steps=6, log_every=2, ckpt_every=3,
                                on_nonfinite="skip"), tiny_model())
    trainer.train_step()
    trainer.train_step()
    before = {"model": {k: v.clone() for k, v in trainer.model.state_dict().items()},
              "ema": {k: v.clone() for k, v in trainer.ema.state_dict().items()},
              "opt": {k: {n: t.clone() for n, t in s.items()}
                      for k, s in _opt_state(trainer).items()}}
    trainer.train_step()                                            # NaN: skipped
    assert trainer.step == 3
    assert state_equal(trainer.model.state_dict(), before["model"])
    assert state_equal(trainer.ema.state_dict(), before["ema"])
    assert all(state_equal(s, before["opt"][k]) for k, s in _opt_state(trainer).items())
    assert int(_opt_state(trainer)[0]["step"]) == 2                 # Adam's count unchanged
    trainer.train_step()
    assert not state_equal(trainer.model.state_dict(), before["model"])

    summary = trainer.run()                                         # continues to step 6
    assert summary["step"] == 6 and summary["skipped"] == 1 and summary["stopped"] is None
    rows = read_log(tmp_path / "log.jsonl")
    assert [(r["step"], r["skipped"]) for r in rows] == [(6, 1)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 6 and ckpt["args"]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_skip_mode_run_logs_skipped_steps(tmp_path, monkeypatch, capsys):
    _nan_batch_at(monkeypatch, 2)
    summary = train(tiny_args(tmp_path, steps=4, log_every=2, on_nonfinite="skip"), tiny_model())
    assert summary["skipped"] == 1 and summary["step"] == 4
    assert [r["skipped"] for r in read_log(tmp_path / "log.jsonl")] == [0, 1]
    out = capsys.readouterr().out
    assert "skipped step 3: non-finite loss or gradient (1 skipped so far)" in out
    assert (tmp_path / "log.csv").read_text().splitlines()[0].endswith(",skipped")


def test_skip_and_stop_modes_are_bit_identical_without_nonfinite_steps(tmp_path):
    kw = {"steps": 3, "grad_clip": 0.5, "label_dropout": 0.3}
    stop = Trainer(tiny_args(tmp_path / "stop", **kw), tiny_model())
    skip = Trainer(tiny_args(tmp_path / "skip", on_nonfinite="skip", **kw), tiny_model())
    stop.run()
    skip.run()
    assert _same_state(stop, skip)


class _HostReads(TorchDispatchMode):
    """Counts what would copy a device value to the host (a device sync on CUDA), on CPU tensors:
    the ops behind item() / bool() / float() / nonzero, and the copy-out methods (cpu, tolist,
    numpy) that CPU tensors short-cut past the dispatcher. (`.to(device)` is not counted: on CPU
    it cannot tell a copy to the host from torch's own same-device `.to(grad.device)`.)"""
    SYNCING = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero",
               "aten::equal", "aten::_assert_async"}

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads = []
        for name in ("cpu", "tolist", "numpy"):
            method = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, method))

    def _counting(self, name, method):
        def wrapper(tensor, *args, **kwargs):
            self.reads.append(name)
            return method(tensor, *args, **kwargs)
        return wrapper

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING:
            self.reads.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["stop", "skip"])
@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_update_reads_nothing_back_to_the_host(tmp_path, monkeypatch, mode, grad_clip):
    # the guard adds no device sync per step: grad norm, check, AdamW and EMA stay on the device
    trainer = Trainer(tiny_args(tmp_path, on_nonfinite=mode, grad_clip=grad_clip), tiny_model())
    trainer.train_step()                                            # optimizer state exists
    for poison in (False, True):
        x, y, _, draws = trainer.batch(trainer.step)
        if poison:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        from sgkernels.train.objective import batch_loss

        loss = batch_loss(trainer.model, trainer.config, x, y, draws)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        with _HostReads(monkeypatch) as reads:
            trainer.update(loss.detach())
        assert reads.reads == [], reads.reads
    with _HostReads(monkeypatch) as reads:                          # the counter does see reads
        trainer.guard.read(flush=False)
        loss.item()
    assert reads.reads == ["cpu", "tolist", "aten::_local_scalar_dense"], reads.reads


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_cuda_update_does_not_sync(tmp_path, mode):
    trainer = Trainer(tiny_args(tmp_path, device="cuda", on_nonfinite=mode, grad_clip=1.0),
                      tiny_model())
    trainer.train_step()
    x, y, _, draws = trainer.batch(trainer.step)
    from sgkernels.train.objective import batch_loss

    loss = batch_loss(trainer.model, trainer.config, x, y, draws)
    trainer.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.update(loss.detach())
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.step == 2


# -- preemption ------------------------------------------------------------------------------
def test_stop_signals_set_a_flag_and_restore_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)                         # repeats are ignored
        time.sleep(0.01)
        assert signals.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_signal_stops_run_at_step_boundary_in_process(tmp_path, monkeypatch):
    step_fn = Trainer.train_step

    def signalled_at_3(self):
        loss = step_fn(self)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Trainer, "train_step", signalled_at_3)
    summary = train(tiny_args(tmp_path, steps=50, log_every=0, sample_every=2), tiny_model())
    assert summary["stopped"] == "SIGINT" and summary["step"] == 3
    assert summary["checkpoint"] == tmp_path / "checkpoints" / "0000003.pt"
    assert read_checkpoint(tmp_path / "checkpoints" / "latest.pt")["step"] == 3
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["0000002.png"]  # none at stop
    assert not (tmp_path / "loss.png").exists()


ARGS = ["--model", "Tiny/2", "--set", "input_size=8", "patch_size=2", "--data", "digits",
        "--batch", "8", "--lr", "1e-3", "--label-dropout", "0.3", "--grad-clip", "0.5",
        "--ema-decay", "0.9", "--ckpt-every", "0", "--sample-every", "0", "--log-every", "1",
        "--sample-steps", "2", "--sample-count", "10", "--device", "cpu", "--no-progress"]


def _env():
    # the same intra-op thread count as this process: runs here and there match bit for bit
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()),
                PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _rows(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _signal_when(proc, out: Path, rows: int, sig, pid=None, timeout=120.0):
    """Send `sig` to `pid` (default: proc) once out/log.jsonl has `rows` rows, i.e. training
    runs; return proc's (returncode, stdout, stderr)."""
    deadline = time.time() + timeout
    try:
        while _rows(out) < rows:
            if proc.poll() is not None:
                raise AssertionError(f"exited early: {proc.communicate()}")
            assert time.time() < deadline, "training never got going"
            time.sleep(0.05)
        os.kill(proc.pid if pid is None else pid, sig)
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr


def _train_proc(args, **kw):
    return subprocess.Popen([sys.executable, *args], env=_env(), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _stopped_at(stdout: str, sig: str, out: Path) -> int:
    lines = stdout.strip().splitlines()
    match = re.fullmatch(rf"stopped by {sig} at step (\d+) of 100000: checkpoint (\S+); "
                         "continue with --resume", lines[-1] if lines else "")
    assert len(lines) == 1 and match, stdout
    step = int(match.group(1))
    assert Path(match.group(2)) == out / "checkpoints" / f"{step:07d}.pt"
    assert read_checkpoint(out / "checkpoints" / "latest.pt")["step"] == step
    return step


def test_sigterm_then_sigint_to_a_training_process_resume_exactly(tmp_path):
    run, ref = tmp_path / "run", tmp_path / "ref"
    cmd = ["-m", "sgkernels", "train", *ARGS, "--steps", "100000", "--out", str(run)]
    rc, stdout, stderr = _signal_when(_train_proc(cmd), run, 2, signal.SIGTERM)
    assert rc == 0, stderr[-3000:]
    first = _stopped_at(stdout, "SIGTERM", run)
    assert first >= 2

    rc, stdout, stderr = _signal_when(_train_proc(cmd + ["--resume"]), run, first + 2,
                                      signal.SIGINT)
    assert rc == 0, stderr[-3000:]
    second = _stopped_at(stdout, "SIGINT", run)
    assert second >= first + 2

    total = str(second + 2)
    assert main(ARGS + ["--steps", total, "--resume", "--out", str(run)]) == 0
    assert main(ARGS + ["--steps", total, "--out", str(ref)]) == 0
    a, b = (read_checkpoint(d / "checkpoints" / "latest.pt") for d in (run, ref))
    assert a["step"] == b["step"] == second + 2
    assert state_equal(a["model"], b["model"]) and state_equal(a["ema"], b["ema"])
    assert all(state_equal(a["opt"]["state"][k], s) for k, s in b["opt"]["state"].items())
    rows = [read_log(d / "log.jsonl") for d in (run, ref)]
    assert [r["step"] for r in rows[0]] == list(range(1, second + 3))  # every step logged once
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]  # bit for bit


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _rank_pid(agent: int, rank: int, timeout=60.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for pid in _children(agent):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} worker under torchrun {agent}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_ddp_signal_to_one_rank_stops_all_ranks_at_one_step(tmp_path):
    """SIGTERM to rank 1 only: both ranks agree (all_reduce of the flag) and stop after the same
    step; rank 0 writes the checkpoint; the 2-process resume equals an uninterrupted 2-process
    run bit for bit."""
    from train_helpers import free_port

    def torchrun(*extra):
        return ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m",
                "sgkernels", "train", *ARGS, *extra]

    run, ref = tmp_path / "run", tmp_path / "ref"
    proc = _train_proc(torchrun("--steps", "100000", "--out", str(run)))
    rc, stdout, stderr = _signal_when(proc, run, 2, signal.SIGTERM, pid=_rank_pid(proc.pid, 1))
    assert rc == 0, stderr[-4000:]
    step = _stopped_at(stdout, "SIGTERM", run)

    total = str(step + 1)
    for extra in (["--steps", total, "--resume", "--out", str(run)],
                  ["--steps", total, "--out", str(ref)]):
        done = subprocess.run([sys.executable, *torchrun(*extra)], env=_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
    a, b = (read_checkpoint(d / "checkpoints" / "latest.pt") for d in (run, ref))
    assert a["step"] == b["step"] == step + 1 and a["args"]["world_size"] == 2
    assert state_equal(a["model"], b["model"]) and state_equal(a["ema"], b["ema"])


def _nonfinite_rank_worker(rank, port, out, mode, queue):
    """Rank `rank` of a 2-process gloo run in which only rank 1 sees a NaN batch at step 3."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if rank == 1:
        Trainer.batch = nan_batch_at(2)
    trainer = Trainer(tiny_args(out, steps=5, log_every=1, on_nonfinite=mode), tiny_model())
    try:
        summary = trainer.run()
        digest = hashlib.sha256()
        for value in trainer.model.state_dict().values():
            digest.update(value.detach().contiguous().numpy().tobytes())
        queue.put((rank, summary["step"], summary["skipped"], digest.hexdigest()))
    except FloatingPointError as e:
        queue.put((rank, "FloatingPointError", str(e), None))
    finally:
        trainer.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_ddp_nonfinite_on_one_rank_is_handled_on_all_ranks(tmp_path, mode):
    import multiprocessing

    from train_helpers import free_port

    ctx = multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_nonfinite_rank_worker, args=(r, port, str(tmp_path), mode, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = dict((r[0], r[1:]) for r in (queue.get(timeout=180) for _ in procs))
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    if mode == "stop":
        assert [results[r][0] for r in (0, 1)] == ["FloatingPointError"] * 2, results
        assert all("non-finite loss at step 3 (loss nan" in results[r][1] for r in (0, 1))
    else:
        assert [results[r][:2] for r in (0, 1)] == [(5, 1), (5, 1)]
        assert results[0][2] == results[1][2]                     # the ranks stay in sync


# -- full disk during a checkpoint write ----------------------------------------------------------
class _FillingFile:
    """A file opened by atomic_write on a disk that is full after `room` more bytes: its write
    raises OSError(ENOSPC) like a real one (a real full tmpfs gives the same result)."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        self.room -= len(memoryview(data).cast("B"))
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _full_disk(monkeypatch, when) -> None:
    """While when() is true, files opened by atomic_write fill up after 1000 bytes (torch.save
    itself runs: it reports the failed write as a RuntimeError, atomic_write as the OSError)."""
    fdopen = os.fdopen
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: (
        _FillingFile(fdopen(fd, mode), 1000) if when() else fdopen(fd, mode)))


def test_save_atomic_on_a_full_disk_raises_oserror_and_keeps_previous(tmp_path, monkeypatch):
    path = files.save_atomic({"step": 1}, tmp_path / "latest.pt")
    _full_disk(monkeypatch, lambda: True)
    with pytest.raises(OSError, match=rf"writing {re.escape(str(path))}: No space left on device "
                       r"\(the file keeps its previous content; temporary file removed\)") as info:
        files.save_atomic({"w": torch.zeros(10_000)}, path)
    assert info.value.errno == errno.ENOSPC
    assert isinstance(info.value.__cause__.__cause__, RuntimeError)  # what torch.save raised
    assert os.listdir(tmp_path) == ["latest.pt"]
    assert torch.load(path, weights_only=True) == {"step": 1}


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_during_checkpoint_keeps_previous(tmp_path, monkeypatch, where):
    state = {"full": False}
    save_checkpoint, real_fsync = Trainer.save_checkpoint, files.os.fsync

    def save_on_full_disk_at_4(self):
        state["full"] = self.step == 4
        try:
            return save_checkpoint(self)
        finally:
            state["full"] = False

    def fsync(fd):
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_on_full_disk_at_4)
    if where == "write":
        _full_disk(monkeypatch, lambda: state["full"])
    else:
        monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(OSError) as info:
        train(tiny_args(tmp_path, steps=6, ckpt_every=2), tiny_model())
    ckpts = tmp_path / "checkpoints"
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert f"not written to {ckpts / '0000004.pt'}: No space left on device" in message, message
    assert f"previous checkpoint {ckpts / '0000002.pt'} (step 2) is intact" in message
    assert sorted(p.name for p in ckpts.iterdir()) == ["0000002.pt", "latest.pt"]  # no temp file
    assert read_checkpoint(ckpts / "latest.pt")["step"] == 2

    monkeypatch.undo()                                              # space freed: resume
    resumed = Trainer(tiny_args(tmp_path, steps=4, ckpt_every=2, resume=True), tiny_model(seed=1))
    assert resumed.step == 2 and resumed.run()["step"] == 4


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ".0000002.pt.x1y2.tmp").write_bytes(b"PK torn")
    (ckpts / ".latest.pt.123.link").write_bytes(b"")
    train(tiny_args(tmp_path, steps=1), tiny_model())
    assert sorted(p.name for p in ckpts.iterdir()) == ["0000001.pt", "latest.pt"]
