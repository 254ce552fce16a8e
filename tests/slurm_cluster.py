"""A real single-node SLURM cluster for the tests: Debian's munge and slurm-wlm (`make slurm`
installs them), configured in a temporary folder and started and stopped by the test.

munged, slurmctld and slurmd run in the foreground as children of the test process, with every
file they use (config, munge key and socket, state, spool, pid files, logs) in that folder and
their ports picked free on loopback, so nothing the machine already runs is touched. The node is
this machine under its short host name, with its real CPU layout (`slurmd -C`) and less memory
than it has. Partitions: `cpu` (the default) and `gpu`, both that node, the names
profiles/slurm uses.

GPUs: the node has none, so it declares two GPUs of type `fake` (gres.conf with AutoDetect=off;
slurmd drops a GPU without a device file and refuses a file that is no device, so each is a
character device in the folder with /dev/null's numbers, which nothing opens: no cgroups). The
profile's GPU requests then reach sbatch unchanged (`--gpus=1`) and slurmctld schedules them
like real ones, at most one job per GPU; the jobs themselves run on the CPU (the test config says
`device: cpu`). The other way, overriding the requests with `--set-resources <rule>:gpu=0` on
the command line, would replace the profile's whole `set-resources` (a top-level key given on
the command line replaces the profile's) and leave the GPU path untested.

Accounting without slurmdbd (which needs MariaDB): `AccountingStorageType=accounting_storage/none`
plus `JobCompType=jobcomp/filetxt` (Debian's Slurm 22.05 has no accounting_storage/filetxt), so
`sacct --completion` lists every finished job (id, name, partition, state, time limit, CPUs,
nodes; not the requested memory) from the completion file. `MinJobAge=3600` keeps finished jobs in slurmctld for an hour,
so `squeue --states=all` (the plugin's status command here) and `scontrol show job` (the
requested memory, GPUs, comment) still see them. `sacctmgr` has no database to ask (it fails:
"Only 'accounting_storage/slurmdbd' is supported"): the plugin's account check then asks
`sshare`, which answers nothing without associations, so the plugin warns "Proceeding without
account validation" and passes the profile's account to sbatch, which takes it as a label.

One file lives outside the folder: /etc/slurm/slurm.conf, a symlink to the folder's config,
removed at shutdown. snakemake-executor-plugin-slurm-jobstep 0.6 starts each job's step with
`srun` in an environment stripped of every SLURM_* variable but the job ids (SLURM_CONF among
them), so that `srun` finds the cluster only at the default path. A real config there is never
replaced (the test skips); a dangling symlink left by a killed run is.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "sacct", "scontrol", "scancel")
# Every process of the test cluster (daemons, slurmstepd, the jobs: sbatch exports it, and the
# jobstep plugin strips only SLURM_*, SRUN_* and SBATCH_* variables) carries this variable, set
# to the cluster's folder: shutdown finds and ends exactly those processes.
MARKER = "CIRCUITFLOW_TEST_SLURM"
# The folder's name, so a dangling /etc/slurm/slurm.conf can be recognised as ours.
FOLDER_TAG = "circuitflow-slurm"
FAKE_GPUS = 2


def unavailable_reason() -> str | None:
    """Why no test cluster can run here (one line), or None."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (f"SLURM not installed ({', '.join(missing)} missing): `make slurm` installs Debian's "
                "slurm-wlm and munge when run as root")
    if os.geteuid() != 0:
        return "the SLURM test cluster needs root (slurmd starts the jobs as their user)"
    if SYSTEM_CONF.is_symlink() or SYSTEM_CONF.exists():
        target = os.readlink(SYSTEM_CONF) if SYSTEM_CONF.is_symlink() else ""
        if FOLDER_TAG in target and not Path(target).exists():
            return None  # left by a killed run: replaced at start
        if FOLDER_TAG in target:
            return f"another SLURM test cluster is running ({SYSTEM_CONF} -> {target})"
        return f"this machine has its own SLURM config at {SYSTEM_CONF}; the test cluster does not replace it"
    if not SYSTEM_CONF.parent.is_dir():
        return f"{SYSTEM_CONF.parent} does not exist (slurm-wlm's packages create it)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_hardware() -> dict[str, int]:
    """`slurmd -C`: this machine's CPUs, boards, sockets, cores, threads and memory (MB)."""
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    fields = dict(item.split("=", 1) for item in line.split())
    return {key: int(value) for key, value in fields.items() if key != "NodeName"}


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"({error})"


@dataclass
class SlurmCluster:
    root: Path
    node: str
    cpus: int
    real_memory: int
    env: dict[str, str]
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def jobcomp(self) -> Path:
        return self.root / "jobcomp.txt"

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> str:
        """A SLURM client command against this cluster; its stdout."""
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o`, as {key: value} (values with spaces, like Command, come cut)."""
        line = self.run("scontrol", "show", "job", "-o", str(job_id)).strip()
        return dict(item.split("=", 1) for item in line.split() if "=" in item)

    def sacct(self, *fields: str) -> list[dict[str, str]]:
        """Every finished job from the completion log (`sacct --completion`), one dict per job."""
        # sacct's window starts at midnight unless told otherwise
        out = self.run("sacct", "--completion", "--allusers", "--parsable2", "--noheader", "--starttime=now-2days",
                       f"--format={','.join(fields)}")
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log} (last {lines} lines) ---\n{_tail(log, lines)}")
        return "\n".join(parts)

    def env_for(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) with this cluster's SLURM_CONF and marker."""
        return {**(base if base is not None else os.environ), "SLURM_CONF": str(self.conf), MARKER: str(self.root)}


def _write_config(root: Path, node: str, hardware: dict[str, int], real_memory: int) -> None:
    for sub in ("etc", "state", "spool", "log", "munge", "dev"):
        (root / sub).mkdir(mode=0o700, exist_ok=True)
    (root / "munge").chmod(0o711)  # munged wants its socket's folder searchable by all
    # slurmd drops a GPU without a device file and refuses one that is not a device: each fake GPU
    # is a character device with /dev/null's numbers (nothing opens them: no cgroup constraint).
    null = os.stat("/dev/null").st_rdev
    for index in range(FAKE_GPUS):
        try:
            os.mknod(root / "dev" / f"fakegpu{index}", 0o600 | stat.S_IFCHR, null)
        except PermissionError as error:
            raise RuntimeError(f"cannot create the fake GPUs' device files (mknod, needs CAP_MKNOD): {error}")
    layout = " ".join(f"{key}={hardware[key]}" for key in
                      ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore") if key in hardware)
    conf = f"""\
# A single-node test cluster (tests/slurm_cluster.py); every path is in {root}.
ClusterName=circuitflow-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (none may be writable here): processes tracked by /proc, no binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Memory is enforced by polling each second: a step above its --mem is killed (job state FAILED).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SelectType=select/cons_tres
# Cores and memory are what jobs consume (--mem is then each job's limit).
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# Finished jobs stay visible to squeue/scontrol for an hour (the plugin's squeue status needs >= 120 s).
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
KillWait=5
InactiveLimit=0
SlurmdTimeout=60
NodeName={node} NodeAddr=127.0.0.1 {layout} RealMemory={real_memory} Gres=gpu:fake:{FAKE_GPUS} State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={node} MaxTime=INFINITE State=UP
"""
    (root / "etc" / "slurm.conf").write_text(conf)
    (root / "etc" / "gres.conf").write_text(
        f"AutoDetect=off\nNodeName={node} Name=gpu Type=fake File={root}/dev/fakegpu[0-{FAKE_GPUS - 1}]\n")
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)


def _our_processes(root: Path) -> list[int]:
    """Pids of processes (but this one) whose environment has MARKER=root."""
    needle = f"{MARKER}={root}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes() + b"\0"
        except OSError:
            continue
        if b"\0" + needle in b"\0" + environ:
            found.append(int(entry))
    return found


def _wait(predicate, timeout: float, what: str, cluster: SlurmCluster | None = None, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tails = f"\n{cluster.log_tails()}" if cluster else ""
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")
        for name, process in (cluster.daemons.items() if cluster else ()):
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} while waiting for {what}\n"
                                   f"{cluster.log_tails()}")
        time.sleep(interval)


def _node_state(cluster: SlurmCluster) -> str:
    result = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%t", "--nodes", cluster.node],
                            env=cluster.env, capture_output=True, text=True, timeout=30)
    states = set(result.stdout.split()) if result.returncode == 0 else set()
    return states.pop() if len(states) == 1 else ",".join(sorted(states))  # one line per partition


def _stop(cluster: SlurmCluster) -> None:
    """Cancel every job, stop the daemons, then end whatever else of the cluster still runs."""
    if cluster.daemons.get("slurmctld") and cluster.daemons["slurmctld"].poll() is None:
        subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=cluster.env, capture_output=True, timeout=30)
        try:
            _wait(lambda: not cluster.run("squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING",
                                          check=False, timeout=10).strip(), 30, "cancelled jobs to end")
        except RuntimeError:
            pass
    for name in ("slurmd", "slurmctld", "munged"):
        process = cluster.daemons.get(name)
        if process is None or process.poll() is not None:
            continue
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for _ in range(3):  # slurmstepd and job processes that outlived slurmd
        pids = _our_processes(cluster.root)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    if SYSTEM_CONF.is_symlink() and os.readlink(SYSTEM_CONF) == str(cluster.conf):
        SYSTEM_CONF.unlink()


@contextmanager
def slurm_cluster(parent: Path | None = None, start_timeout: float = 60) -> Iterator[SlurmCluster]:
    """A running single-node cluster in a new folder under `parent` (default: the temp dir), stopped
    on exit whatever happens inside; the folder is removed after a clean exit and kept (logs
    included) after an exception. Raises RuntimeError, with the daemons' log tails, if it won't start.

    munged insists that every folder above its socket be searchable by all, which pytest's
    tmp_path (under a 0700 folder) is not: hence a folder of its own."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix=f"{FOLDER_TAG}-", dir=parent))
    root.chmod(0o711)
    closed = [str(p) for p in root.parents if not os.stat(p).st_mode & stat.S_IXOTH]
    if closed:
        shutil.rmtree(root)
        raise RuntimeError(f"munged needs every folder above its socket searchable by all, not {closed[0]}: "
                           "pass another parent folder")
    node = socket.gethostname().split(".")[0]
    hardware = _node_hardware()
    real_memory = int(hardware["RealMemory"] * 0.8)  # below the machine's, or slurmd is refused
    _write_config(root, node, hardware, real_memory)
    cluster = SlurmCluster(root=root, node=node, cpus=hardware["CPUs"], real_memory=real_memory, env={})
    cluster.env = cluster.env_for()
    clean = False
    try:
        if SYSTEM_CONF.is_symlink() and FOLDER_TAG in os.readlink(SYSTEM_CONF):
            SYSTEM_CONF.unlink()  # dangling, from a killed run (unavailable_reason checked that)
        SYSTEM_CONF.symlink_to(cluster.conf)

        def start(name: str, *command: str) -> None:
            log = open(root / "log" / f"{name}.stdout.log", "wb")
            cluster.daemons[name] = subprocess.Popen(command, env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, start_new_session=True)
            log.close()

        munge = root / "munge"
        start("munged", "munged", "--foreground", f"--socket={munge}/munge.socket",
              f"--key-file={munge}/munge.key", f"--pid-file={munge}/munged.pid",
              f"--seed-file={munge}/munged.seed", f"--log-file={root}/log/munged.log", "--num-threads=2")
        _wait(lambda: (munge / "munge.socket").exists(), start_timeout, "munged's socket", cluster, 0.1)
        start("slurmctld", "slurmctld", "-D", "-i", "-f", str(cluster.conf))
        _wait(lambda: subprocess.run(["scontrol", "ping"], env=cluster.env, capture_output=True,
                                     timeout=10).returncode == 0, start_timeout, "slurmctld to answer", cluster)
        start("slurmd", "slurmd", "-D", "-f", str(cluster.conf), "-N", node)
        _wait(lambda: _node_state(cluster) == "idle", start_timeout, f"node {node} to be idle", cluster)
        yield cluster
        clean = True
    finally:
        _stop(cluster)
        if clean:
            shutil.rmtree(root, ignore_errors=True)
