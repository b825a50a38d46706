"""Run sdmcunet commands in processes of their own and SIGKILL them at chosen points (tests only).

Importing torch and sdmcunet takes several seconds on a small CI machine, more than most of the
commands the fault tests run. So a server process (this file run as a script) imports them once
and forks a warm child per command; the child calls the command's `main(argv)`, the function its
console script calls, in a process group of its own. The server takes one JSON request per line
on stdin and answers one JSON line on stdout:

    {"module": "sdmcunet.training.run_training", "argv": [...], "env": {...}, "log": FILE,
     "kill": KILL, "file_size_limit": BYTES, "timeout": SECONDS}
    -> {"returncode": N, "killed": B, "timed_out": B}

KILL is null (run to the end) or one of
    {"after_seconds": S}                      killed from outside S seconds after the start;
    {"at_write": N, "of": TEXT, "written": F} killed during the N-th atomic write of a file whose
                                              name contains TEXT, when a fraction F of the
                                              temporary file is on disk, before its rename;
    {"at_call": "module:Class.method", "n": N} killed as the N-th call of that function begins.
A kill takes the whole process group (the command's worker processes too), as the OOM killer or
a lost machine would. `file_size_limit` (RLIMIT_FSIZE) makes every write beyond that many bytes
of a file fail as on a full disk (EFBIG instead of ENOSPC), inside torch, SimpleITK and numpy.
"""

import importlib
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

# The commands, and what they import on first use (matplotlib is set up as sdmcunet.training.progress does).
PRELOADED = ("sdmcunet.training.run_training", "sdmcunet.inference.predict",
             "sdmcunet.experiment_planning.plan_and_preprocess", "monai.networks.nets", "matplotlib.pyplot")
SDMC_FOLDERS = ("SDMC_raw", "SDMC_preprocessed", "SDMC_results", "SDMC_weights")


# --- the server side ----------------------------------------------------------------------------
def _kill_command() -> None:
    os.killpg(0, signal.SIGKILL)


def _kill_at_write(n: int, of: str, written: float) -> None:
    """`atomic_path` fsyncs each temporary file just before renaming it: the hook for "mid-write"."""
    count = multiprocessing.Value("i", 0)  # shared with the worker processes the command forks
    fsync = os.fsync

    def fsync_or_kill(descriptor: int) -> None:
        if of in Path(os.readlink(f"/proc/self/fd/{descriptor}")).name:
            with count.get_lock():
                count.value += 1
                if count.value == n:
                    os.ftruncate(descriptor, int(os.fstat(descriptor).st_size * written))
                    _kill_command()
        fsync(descriptor)

    os.fsync = fsync_or_kill


def _kill_at_call(target: str, n: int) -> None:
    module_name, qualified_name = target.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualified_name.split(".")
    for attribute in path:
        owner = getattr(owner, attribute)
    original, calls = getattr(owner, name), 0

    def counted(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            _kill_command()
        return original(*args, **kwargs)

    setattr(owner, name, counted)


def _run_child(request: dict, output: int) -> None:
    """In the forked child: set up the kill, run the command with its output into the pipe
    `output`, never return."""
    code = 1
    try:
        os.setpgid(0, 0)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # stdin is the server's request pipe
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.environ.update(request["env"])
        if request.get("file_size_limit"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (request["file_size_limit"], resource.RLIM_INFINITY))
        kill = request.get("kill") or {}
        if "at_write" in kill:
            _kill_at_write(kill["at_write"], kill.get("of", ""), kill["written"])
        elif "at_call" in kill:
            _kill_at_call(kill["at_call"], kill["n"])
        code = importlib.import_module(request["module"]).main(request["argv"])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, kill_after: float | None, timeout: float) -> dict:
    """The child's exit code (negative: the signal that ended it), once it has ended or been killed."""
    start, timed_out, killed = time.monotonic(), False, False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            returncode = os.waitstatus_to_exitcode(status)
            return {"returncode": returncode, "killed": returncode == -signal.SIGKILL, "timed_out": timed_out}
        elapsed = time.monotonic() - start
        if not killed and (elapsed >= timeout or (kill_after is not None and elapsed >= kill_after)):
            os.killpg(pid, signal.SIGKILL)
            timed_out, killed = elapsed >= timeout, True
        time.sleep(0.01)


def serve() -> None:
    importlib.import_module("matplotlib").use("Agg")
    for module in PRELOADED:
        importlib.import_module(module)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        # The output goes through a pipe, which a file size limit does not concern, into the log.
        output, child_output = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(output)
            _run_child(request, child_output)
        os.close(child_output)
        try:
            os.setpgid(pid, pid)  # also here, so that a kill right after the fork finds the group
        except (PermissionError, ProcessLookupError):  # the child got there first, or has ended
            pass
        relay = threading.Thread(target=_copy_output, args=(output, request["log"]))
        relay.start()
        reply = _wait(pid, (request.get("kill") or {}).get("after_seconds"), request["timeout"])
        relay.join(timeout=60)  # the end of the output: when the command's last process has ended
        print(json.dumps(reply), flush=True)


def _copy_output(output: int, log: str) -> None:
    with open(output, "rb") as source, open(log, "wb") as sink:
        shutil.copyfileobj(source, sink)


# --- the test side ------------------------------------------------------------------------------
@dataclass
class Run:
    returncode: int
    killed: bool
    output: str  # stdout and stderr of the command


class CommandServer:
    """The test's handle on a server process; `run` blocks until the command ends or is killed."""

    def __init__(self, log_folder: Path):
        self.log_folder, self.runs = log_folder, 0
        # One thread: on a small shared machine, OpenMP threads waiting for each other make the tiny
        # networks of these tests several times slower.
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        assert json.loads(self.process.stdout.readline()) == {"ready": True}, "the command server did not start"

    def run(self, module: str, argv: list[str], folders: dict[str, Path], kill: dict | None = None,
            file_size_limit: int | None = None, timeout: float = 300) -> Run:
        """`folders`: all four SDMC_* variables, so that no command sees the user's data."""
        assert set(folders) == set(SDMC_FOLDERS), folders
        self.runs += 1
        log = self.log_folder / f"run_{self.runs}.log"
        request = {"module": module, "argv": argv, "env": {key: str(value) for key, value in folders.items()},
                   "log": str(log), "kill": kill, "file_size_limit": file_size_limit, "timeout": timeout}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        assert not reply["timed_out"], f"{module} {argv} ran for more than {timeout} s:\n{log.read_text()[-3000:]}"
        return Run(reply["returncode"], reply["killed"], log.read_text(errors="replace"))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


if __name__ == "__main__":
    serve()
