"""Starting data-parallel training processes with ``mpiexec``, and knowing when one was started so.

``cnnkit train --processes N`` runs the same command in ``N`` processes on this machine through
the ``mpiexec`` that ``pip install "cnnkit[mpi]"`` installs (mpich's). A process reads from its
environment whether a launcher started it among several (:func:`launched_processes`), so a lone
process never imports mpi4py.

When one process dies (a kill, a crash), mpich's ``mpiexec`` ends the others at once and prints
the dead process's id; the processes themselves record which rank each id is
(``CNNKIT_PROCESS_TABLE``, written by rank 0 at the start), so :func:`launch` can say which rank
died.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import CnnkitError

INSTALL = 'pip install "cnnkit[mpi]"'
#: variables that MPI launchers set in the processes they start: Open MPI, Hydra (mpich, Intel MPI,
#: Slurm's PMI), MVAPICH
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
#: a file in which rank 0 writes ``{pid: rank}`` of every process (set by :func:`launch`)
PROCESS_TABLE = "CNNKIT_PROCESS_TABLE"
_HYDRA_FAILURE = re.compile(r"PID (\d+) RUNNING AT (\S+)")
_HYDRA_EXIT_CODE = re.compile(r"EXIT CODE: (\d+)")


def launched_processes(environ=os.environ) -> int:
    """How many processes an MPI launcher (``mpiexec``) started this one among; 1 when it was not
    started by one. Reads the launcher's environment, so mpi4py is not imported."""
    for name in LAUNCHER_SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit() and int(value) >= 1:
            return int(value)
    return 1


def find_mpiexec() -> str | None:
    """The ``mpiexec`` to start processes with: the one beside this Python (the mpich wheel puts it
    in the environment's ``bin``), else the first on ``PATH``; None when there is none."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def write_process_table(table: dict[int, int]) -> None:
    """Record ``{pid: rank}`` where :func:`launch` asked for it (no-op when not launched by it)."""
    path = os.environ.get(PROCESS_TABLE)
    if path:
        Path(path).write_text(json.dumps({str(pid): rank for pid, rank in table.items()}))


def launch(processes: int, arguments: list[str], option: str = "--processes") -> int:
    """Run ``python -m cnnkit.cli ARGUMENTS`` in ``processes`` processes started by ``mpiexec``;
    return its exit status. A CnnkitError names what to install when mpi4py or mpiexec is
    missing, and the rank of a process that died."""
    from importlib.util import find_spec
    if find_spec("mpi4py") is None:
        raise CnnkitError(f"{option} {processes} needs mpi4py, which is not installed; install it with {INSTALL}")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise CnnkitError(f"{option} {processes} needs mpiexec to start the processes, and there is none beside "
                          f"{sys.executable} nor on PATH; install it with {INSTALL} (the mpich wheel provides "
                          f"it), or start cnnkit with your MPI's own mpiexec -n N")
    with tempfile.TemporaryDirectory(prefix="cnnkit-launch-") as folder:
        table = Path(folder) / "processes.json"
        command = [mpiexec, "-n", str(processes), sys.executable, "-m", "cnnkit.cli", *arguments]
        status, dead = _run_relaying(command, {**os.environ, PROCESS_TABLE: str(table)})
        if status != 0 and dead is not None:
            raise CnnkitError(_death_message(dead, _read_table(table), processes))
    return status


def _run_relaying(command: list[str], environ: dict) -> tuple[int, tuple[int, str] | None]:
    """Run ``command``, passing its output on line by line; return its exit status and, when
    mpiexec reported a process that ended badly, that process's ``(pid, exit code)``."""
    job = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environ, bufsize=1)
    pid, code = None, "?"
    for line in job.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        found = _HYDRA_FAILURE.search(line)
        pid = int(found.group(1)) if found and pid is None else pid
        exit_code = _HYDRA_EXIT_CODE.search(line)
        code = exit_code.group(1) if exit_code and code == "?" else code
    status = job.wait()
    return status, (pid, code) if pid is not None else None


def _read_table(path: Path) -> dict[int, int]:
    try:
        return {int(pid): int(rank) for pid, rank in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _death_message(dead: tuple[int, str], table: dict[int, int], processes: int) -> str:
    pid, code = dead
    who = f"process {table[pid]}" if pid in table else "a process"
    return (f"{who} of {processes} (pid {pid}) ended (exit code {code} says mpiexec) and mpiexec ended the "
            f"others; the last checkpoint is intact: continue with --resume, on any number of processes")
