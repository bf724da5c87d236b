"""Test hosts on one machine: a small cluster of Linux network namespaces joined by a bridge.

Why: Ray nodes started side by side on 127.0.0.1 share one ``/etc/hosts``, one process table and one
disk. What breaks only across machines passes there: a node that advertises an address the others
cannot reach, collectives (gloo) that follow the hostname to 127.0.1.1, a result that exists only on
the disk of the node that wrote it. Here
every ``Host`` has

- its own network stack: namespace ``moe-h<i>-<owner pid>``, one veth (``eth0`` inside) to a bridge
  in the root namespace, address ``<subnet>.<i + 1>/24``. The test process, in the root namespace,
  reaches the hosts through the bridge's address ``<subnet>.254`` (HTTP, Ray's GCS and state API);
- its own ``/etc/hosts`` (``/etc/netns/<ns>/hosts``, which ``ip netns exec`` bind-mounts over it): the
  machine's hostname maps to the host's own IP, except on the ``debian_host``, written the way Debian's
  and Ubuntu's installers write it (``127.0.1.1 <hostname>``);
- its own local disk: a tmpfs over ``/tmp`` (``Cluster.private``), as every machine has its own /tmp: one
  path, a different disk on each host, and the root namespace sees none of them. Ray's temp dir, a
  driver's downloads (``tempfile``), the host's working directory all land there;
- its own process table (a pid namespace): Ray finds "the Ray on this machine" by listing processes
  (``ray.init("auto")``, the state API in Ray's own actors), which must see this host's Ray only.

A host is held by its init process (pid 1 of its pid namespace, which reaps orphans); every process of
the host enters its namespaces (``nsenter``), so what one process writes on the host's local disk the
next one reads, and when the init process dies every process of the host dies with it.

Everything else (the repository, the virtualenv, ``$HOME``, ``Cluster.shared`` under /var/tmp, the
datasets, /dev/shm) is one disk for all hosts, as a cluster's shared file system would be.

A Ray driver must run on a Ray node: ``ray.init(address=...)`` attaches to a raylet of its own machine
(its object store; the address it advertises is that node's). The root namespace has none: when Ray's
temp dirs were on a shared disk, a driver there attached to the head's raylet through it, advertised the
head's IP as its own, and a task on another host that needed an object the driver owned hung. Drivers
therefore run on a host, usually the head (``head.run([moe-orch, ...])``), as ``ray exec cluster.yaml
'moe-orch ...'`` runs them on a real head.

No uplink, no NAT, no forwarding: the hosts have no default route and the bridge is connected to no
interface of the machine, so no server started on a host (Ray, MLflow) can be reached from outside this
machine (our rule for the servers tests start).

Names carry the owner's pid (parallel runs do not collide); creating a cluster first removes what a
killed earlier run left behind under its names or under the names of any owner that is gone: by name,
and the processes by the pids found in those namespaces.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from support import SHARED_DATA, Pausable, wait_for

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY, MLFLOW = str(BIN / "ray"), str(BIN / "mlflow")
IP, UNSHARE, NSENTER = (shutil.which(tool, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
                        for tool in ("ip", "unshare", "nsenter"))
# The hosts' network: 198.18.<k>.0/24, in 198.18.0.0/15, which RFC 2544 reserves for benchmarking (no real
# network uses it, so it collides with no LAN or VPN route). Its addresses also sort above 127.0.1.1, which
# matters: gloo connects each pair of ranks in the order of their addresses, so a host that advertises
# 127.0.1.1 breaks a DDP run only when its peers' addresses sort above it (as AWS's 172.31.x.x do); under
# 10.x.x.x that host would always dial out and the 127.0.1.1 problem would never show.
SUBNET_PREFIX = "198.18"
LOCAL_DISK = Path("/tmp")  # what each host has of its own (a tmpfs)
# every host has its own ports, so the usual ones are free on each of them
GCS_PORT, DASHBOARD_PORT, MLFLOW_PORT = 6379, 8265, 5000
# what a cluster's nodes (and drivers) get in their environment, besides the token: Ray Train's per-run
# overhead knobs (orchestrator.ray_runtime.TRAIN_ENV_DEFAULTS reach a local Ray's processes only), and
# Ray's workers at normal priority: they start at nice 15, and on a machine busy with another test run
# they would crawl and miss their health checks (a real cluster's machines run nothing else)
NODE_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            "RAY_worker_niceness": "0"}
# pid 1 of a host: reaps the orphans Ray leaves (a plain `sleep` would collect zombies) and exits on SIGTERM
# (pid 1 ignores signals it has no handler for); its exit takes every process of the host with it
INIT = ("import os, signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: os._exit(0))\n"
        "while True:\n"
        "    try:\n"
        "        os.waitpid(-1, 0)\n"
        "    except ChildProcessError:\n"
        "        time.sleep(0.5)\n")
LEFTOVER = re.compile(r"^(?:moe-h\d+-|moebr|moev|moe-hosts-)(\d+)(?:h\d+)?$")  # <prefix><owner pid>[h<i>]


class CommandFailed(RuntimeError):
    """A setup command (``ip ...``) exited non-zero; the message has its stderr."""


def _run(*cmd: str, check: bool = True, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if check and done.returncode != 0:
        raise CommandFailed(f"`{' '.join(cmd)}` exited {done.returncode}: {done.stderr.strip()}")
    return done


@functools.cache
def unavailable_reason() -> str | None:
    """Why this machine cannot host a ``Cluster`` (None when it can), from a real probe of what a host
    needs: a network namespace with a veth in it, ``ip netns exec`` + ``unshare`` (mount and pid
    namespaces) + a tmpfs, and ``nsenter`` into those. Tests skip with this message."""
    if os.geteuid() != 0:
        return f"network namespaces need root (this is uid {os.geteuid()})"
    missing = [name for name, path in (("ip", IP), ("unshare", UNSHARE), ("nsenter", NSENTER)) if path is None]
    if missing:
        return f"missing tool(s): {', '.join(missing)}"
    assert IP is not None and UNSHARE is not None and NSENTER is not None
    ns, veth = f"moe-probe-{os.getpid()}", f"moeprobe{os.getpid()}"
    mount_point = tempfile.mkdtemp(prefix="moe-probe-")
    try:
        for cmd in ([IP, "netns", "add", ns],
                    [IP, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
                    [IP, "netns", "exec", ns, UNSHARE, "--mount", "--propagation", "private", "--pid", "--fork",
                     "--mount-proc", "sh", "-c", 'mount -t tmpfs moe-probe "$0" && touch "$0/x" && '
                     '"$1" --target=$$ --mount --net --pid -- test -e "$0/x"', mount_point, NSENTER]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                return f"`{' '.join(cmd)}` failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        if os.listdir(mount_point):
            return "a tmpfs mounted in a private mount namespace showed up in the root one"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespace probe failed: {exc!r}"
    finally:
        subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=60)
        subprocess.run([IP, "link", "del", veth], capture_output=True, timeout=60)
        shutil.rmtree(mount_point, ignore_errors=True)
    return None


@dataclass
class Host:
    """One machine of a ``Cluster``: network namespace ``ns`` with address ``ip``, its own /etc/hosts,
    process table and local disk at ``private`` (a tmpfs only this host sees). ``run`` starts a process
    there; ``start_ray`` / ``kill_ray`` its Ray node."""

    name: str
    ip: str
    ns: str
    private: Path  # this host's local disk, /tmp (the same path is another disk on every other host)
    temp_dir: Path  # its Ray node's --temp-dir, on its local disk
    logs: Path
    env: dict[str, str]  # of every process started here (``run``'s ``env`` adds to it)
    keeper: subprocess.Popen | None = None  # `ip netns exec ... unshare ...`: parent of the host's init
    init_pid: int | None = None  # the host's pid 1, as the root namespace numbers it: what nsenter enters
    ray: subprocess.Popen | None = None  # the ``ray start --block`` of this host's node
    procs: list[subprocess.Popen] = field(default_factory=list)

    def prefix(self, cwd: str | Path | None = None) -> list[str]:
        """The command prefix that runs a command on this host, in ``cwd`` as the host sees it (default:
        its local disk): for code that starts processes itself (e.g. ``support.S3Server(wrap=...)``)."""
        assert self.init_pid is not None and NSENTER is not None, f"{self.name} is not up"
        # with --pid nsenter forks: the command is its child, in the same process group
        return [NSENTER, f"--target={self.init_pid}", "--mount", "--net", "--pid", f"--wdns={cwd or self.private}",
                "--"]

    def run(self, cmd: Sequence[str | Path], cwd: str | Path | None = None, env: Mapping[str, str] | None = None,
            **popen_kwargs: Any) -> subprocess.Popen:
        """Start ``cmd`` on this host, in ``cwd`` (default: its local disk), in a process group of its own
        (``os.killpg(proc.pid, ...)`` reaches it). ``env`` adds to the host's environment; other keyword
        arguments go to ``subprocess.Popen``. Every process started here is killed by ``stop``."""
        popen_kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen([*self.prefix(cwd), *map(str, cmd)], env={**self.env, **(env or {})},
                                **popen_kwargs)
        self.procs.append(proc)
        return proc

    def check_output(self, cmd: Sequence[str | Path], timeout_s: float = 120, **kwargs: Any) -> str:
        """Run ``cmd`` on this host (``run``) and return its stdout; fails if it exits non-zero."""
        proc = self.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        finally:
            _kill_group(proc)
        assert proc.returncode == 0, f"{self.name}: {' '.join(map(str, cmd))} exited {proc.returncode}: {err[-2000:]}"
        return out

    def start_ray(self, head: bool = False, address: str | None = None, num_cpus: int = 1,
                  resources: Mapping[str, float] | None = None) -> subprocess.Popen:
        """``ray start --block`` on this host, its node on this host's IP with its own temp dir, as the
        head (GCS on ``GCS_PORT``, dashboard on this host's IP at ``DASHBOARD_PORT``) or joining the head
        at ``address``. Its output: ``<logs>/<name>-ray.log``. Returns the process (also ``self.ray``)."""
        assert head != (address is not None), "either head=True or address=<head ip:port>"
        assert self.ray is None or self.ray.poll() is not None, f"{self.name} runs a Ray node already"
        command = [RAY, "start", "--block", f"--node-ip-address={self.ip}", "--disable-usage-stats",
                   f"--temp-dir={self.temp_dir}", f"--num-cpus={num_cpus}"]
        if resources:
            command.append(f"--resources={json.dumps(dict(resources))}")
        if head:
            command += ["--head", f"--port={GCS_PORT}", "--include-dashboard=true", f"--dashboard-host={self.ip}",
                        f"--dashboard-port={DASHBOARD_PORT}"]
        else:
            command.append(f"--address={address}")
        with (self.logs / f"{self.name}-ray.log").open("a") as log:
            self.ray = self.run(command, stdout=log, stderr=subprocess.STDOUT)
        return self.ray

    def kill_ray(self) -> None:
        """SIGKILL to this host's Ray node: the process group of its ``ray start`` (the raylet, its workers,
        on the head the GCS and the dashboard). Its temp dir stays on the host's disk, as on a machine."""
        if self.ray is not None:
            _kill_group(self.ray)
            self.ray = None

    def stop(self) -> None:
        """Kill every process of this host: the groups of ``run``'s processes, then its init process, whose
        exit kills whatever else lives in its pid namespace (and frees its tmpfs)."""
        self.kill_ray()
        for proc in self.procs:
            _kill_group(proc)
        if self.init_pid is not None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.keeper is not None:
            _kill_group(self.keeper)


def _kill_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGKILL to the process group that ``proc`` leads (started with start_new_session), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pass


class Cluster:
    """``size`` hosts (``Host``) on one bridge, as a context manager: ``__enter__`` creates them (and
    removes what it created if that fails halfway), ``__exit__`` stops every process of the hosts and
    removes every namespace, veth, the bridge, the /etc/netns folders, tmpfs and folders it made, by name
    or pid. ``start_ray`` then puts a Ray node on every host.

    Host 0 is the head; host ``debian_host`` has the Debian-style /etc/hosts (module docstring).
    ``shared``: a folder every host and the root namespace see (for what must be shared, e.g. a driver's
    results; the root namespace's /tmp, pytest's ``tmp_path`` included, is not on the hosts);
    ``private``: every host's local disk (/tmp); ``logs``: the hosts' logs, written from the root namespace
    (a folder given from outside ``root`` outlives the cluster). ``env``: the environment of the hosts' processes and of
    Ray clients in the root namespace: the cluster's token, ``NODE_ENV``, ``MOE_ORCH_DATA``, and the ``env``
    given (e.g. storage credentials). One cluster per process at a time.
    """

    def __init__(self, size: int = 3, debian_host: int = 1, logs: Path | None = None,
                 env: Mapping[str, str] | None = None, owner: int | None = None) -> None:
        assert 1 <= debian_host < size, "the Debian-style host is a worker host"
        self.size, self.debian_host = size, debian_host
        self.owner = owner or os.getpid()
        self.root = Path(f"/var/tmp/moe-hosts-{self.owner}")  # not under /tmp: every host has its own /tmp
        self.shared, self.private = self.root / "shared", LOCAL_DISK
        self.logs = logs or self.root / "logs"
        self.bridge = f"moebr{self.owner}"  # interface names: at most 15 characters
        self.hostname = socket.gethostname()
        self.token = secrets.token_hex(32)  # the cluster's own Ray auth token (RAY_AUTH_TOKEN), not ~/.ray's
        self.subnet = ""  # "198.18.<k>", chosen free in __enter__
        self.hosts: list[Host] = []
        self.address = ""  # "<head ip>:<GCS port>", once start_ray ran
        self.dashboard = ""  # "http://<head ip>:<dashboard port>"
        self.env = {**self._env(), **(env or {})}

    @property
    def bridge_ip(self) -> str:
        """The root namespace's address on the hosts' network."""
        return f"{self.subnet}.254"

    @property
    def head(self) -> Host:
        """Host 0, where the head node, the tracking server and drivers run."""
        return self.hosts[0]

    def __enter__(self) -> Cluster:
        assert IP is not None
        try:
            remove_leftovers(self.owner)
            self.subnet = _free_subnet(self.owner)
            for folder in (self.shared, self.logs):
                folder.mkdir(parents=True, exist_ok=True)
            _run(IP, "link", "add", "name", self.bridge, "type", "bridge")
            _run(IP, "addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            _run(IP, "link", "set", self.bridge, "up")
            for index in range(self.size):
                self._add_host(index)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        # read now (a test may have set it), resolved: a link under /tmp would point nowhere on the hosts
        data = str(Path(os.environ.get("MOE_ORCH_DATA") or SHARED_DATA).resolve())
        # joinable: a local Ray started earlier in this process (orchestrator.ray_runtime) left the switch at 0
        return {**env, **NODE_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "MOE_ORCH_DATA": data,
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}

    def _add_host(self, index: int) -> None:
        assert IP is not None and UNSHARE is not None
        ns, veth, ip = f"moe-h{index}-{self.owner}", f"moev{self.owner}h{index}", f"{self.subnet}.{index + 1}"
        host = Host(name=f"h{index}", ip=ip, ns=ns, private=self.private,
                    temp_dir=self.private / "ray", logs=self.logs, env=dict(self.env))
        self.hosts.append(host)  # before anything of it exists: close() removes whatever got made
        _run(IP, "netns", "add", ns)
        _run(IP, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run(IP, "link", "set", veth, "master", self.bridge, "up")
        _run(IP, "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run(IP, "-n", ns, "link", "set", "eth0", "up")
        _run(IP, "-n", ns, "link", "set", "lo", "up")
        hosts_file = Path("/etc/netns") / ns / "hosts"
        hosts_file.parent.mkdir(parents=True, exist_ok=True)
        hosts_file.write_text(self.hosts_file(index))
        with (self.logs / f"{host.name}-init.log").open("w") as log:
            # `ip netns exec` bind-mounts the host's /etc/hosts into a new mount namespace; unshare makes the
            # host's own from it (+ a pid namespace, its /proc), and its init starts once the tmpfs is mounted
            host.keeper = subprocess.Popen(
                [IP, "netns", "exec", ns, UNSHARE, "--mount", "--propagation", "private", "--pid", "--fork",
                 "--mount-proc", "sh", "-c", self._local_disk_script(index, f"moe-{ns}"), f"moe-{ns}",
                 sys.executable, "-c", INIT],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: _init_pid(host.keeper) is not None, 60, alive=host.keeper)
        host.init_pid = _init_pid(host.keeper)

    def _local_disk_script(self, index: int, name: str) -> str:
        """The shell line that gives a host its own tmpfs at ``private`` and then runs ``"$@"``.

        What every machine of a real cluster shares (the repository, the virtualenv, the datasets) stays
        visible when it lives under ``private`` (a checkout in /tmp): it is bind-mounted aside before the
        tmpfs hides it, and back onto its own path after."""
        wanted = sorted(p for p in {REPO, Path(sys.prefix).resolve(), Path(self.env["MOE_ORCH_DATA"])}
                        if p.is_relative_to(self.private))
        keep = [p for p in wanted if not any(p != q and p.is_relative_to(q) for q in wanted)]
        steps = []
        for i, path in enumerate(keep):
            aside = self.root / "keep" / f"h{index}-{i}"
            aside.mkdir(parents=True, exist_ok=True)
            steps.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(aside))}")
        steps.append(f"mount -t tmpfs -o size=2g {shlex.quote(name)} {shlex.quote(str(self.private))}")
        for i, path in enumerate(keep):
            aside = self.root / "keep" / f"h{index}-{i}"
            steps += [f"mkdir -p {shlex.quote(str(path))}",
                      f"mount --bind {shlex.quote(str(aside))} {shlex.quote(str(path))}"]
        return " && ".join([*steps, 'exec "$@"'])

    def hosts_file(self, index: int) -> str:
        """The /etc/hosts of host ``index``: the hostname on its own IP, or on 127.0.1.1 (the Debian host)."""
        own = "127.0.1.1" if index == self.debian_host else f"{self.subnet}.{index + 1}"
        return f"127.0.0.1\tlocalhost\n{own}\t{self.hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n"

    def start_ray(self, num_cpus: int = 1, head_resources: Mapping[str, float] | None = None,
                  timeout_s: float = 300) -> None:
        """A Ray node on every host (``Host.start_ray``): the head on host 0 (with ``head_resources``),
        then the others joining it; returns once all ``size`` nodes are alive in the GCS."""
        self.head.start_ray(head=True, num_cpus=num_cpus, resources=head_resources)
        self.address, self.dashboard = f"{self.head.ip}:{GCS_PORT}", f"http://{self.head.ip}:{DASHBOARD_PORT}"
        wait_for(lambda: len(self.alive_nodes()) >= 1, timeout_s, alive=self.head.ray)
        for host in self.hosts[1:]:
            host.start_ray(address=self.address, num_cpus=num_cpus)
        wait_for(lambda: self._ray_running() and len(self.alive_nodes()) == self.size, timeout_s)

    def _ray_running(self) -> bool:
        for host in self.hosts:
            log = self.logs / f"{host.name}-ray.log"
            assert host.ray is not None and host.ray.poll() is None, \
                f"{host.name}'s ray start exited {host.ray and host.ray.returncode}: see {log}"
        return True

    def _python(self, code: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """``code`` in a Python of the root namespace, a Ray client of this cluster (its token)."""
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                              env=self.env)

    def alive_nodes(self) -> dict[str, str]:
        """``{node id: node IP}`` of the alive Ray nodes, as the GCS has them (asked from the root namespace;
        empty while the GCS does not answer)."""
        return self._nodes(alive_only=True)

    def _nodes(self, alive_only: bool) -> dict[str, str]:
        state = "state_filter=GcsNodeInfo.GcsNodeState.ALIVE" if alive_only else "state_filter=None"
        done = self._python(
            "import json, ray; from ray.core.generated.gcs_pb2 import GcsNodeInfo; "
            f"infos = ray._raylet.GcsClient(address={self.address!r}).get_all_node_info(timeout=30, {state}); "
            "print(json.dumps({i.hex(): n.node_manager_address for i, n in infos.items()}))")
        if done.returncode != 0 or not done.stdout.strip():
            return {}
        return json.loads(done.stdout.strip().splitlines()[-1])

    def actors(self, class_name: str, state: str | None = None) -> dict[str, str]:
        """``{actor id: host name}`` of every actor of ``class_name`` so far, or of those in ``state``
        (e.g. ``ALIVE``), from Ray's state API through the head's dashboard. Ray names some classes by their
        qualified name (``wrap_function.<locals>.ImplicitFunc``), so the last part is compared."""
        filters = [("state", "=", state)] if state else []
        done = self._python(
            "import json; from ray.util.state import list_actors; print(json.dumps({a.actor_id: a.node_id for a in "
            f"list_actors(address={self.dashboard!r}, filters={filters!r}, detail=True, limit=10000) "
            f"if a.class_name.rsplit('.', 1)[-1] == {class_name!r}}}))")
        assert done.returncode == 0, done.stderr[-2000:]
        host_of = {host.ip: host.name for host in self.hosts}
        node_ips = self._nodes(alive_only=False)  # an actor of a node that died still names its host
        return {actor: host_of.get(node_ips.get(node, ""), node) for actor, node in
                json.loads(done.stdout.strip().splitlines()[-1]).items()}

    def placement_groups(self, state: str = "PENDING") -> int:
        """How many placement groups are in ``state`` (Ray's state API, through the head's dashboard)."""
        done = self._python(
            "from ray.util.state import list_placement_groups; "
            f"print(len(list_placement_groups(address={self.dashboard!r}, filters=[('state', '=', {state!r})], "
            "limit=10000)))")
        assert done.returncode == 0, done.stderr[-2000:]
        return int(done.stdout.strip().splitlines()[-1])

    @contextmanager
    def holding(self, *hosts: Host, cpus: float = 1, timeout_s: float = 300) -> Iterator[None]:
        """While the block runs, an actor on each of ``hosts`` holds ``cpus`` CPUs of its Ray node (their
        driver runs on the head), so Ray places nothing there that needs them: to make a run use the other
        hosts, or to have several requests wait and then get placed at once when the block ends."""
        assert self.address, "start_ray first"
        code = f"""
import sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address={self.address!r}, logging_level="ERROR")
nodes = {{n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}}

@ray.remote(num_cpus={cpus})
class Hold:
    def ready(self) -> bool:
        return True

holds = [Hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(nodes[ip], soft=False)).remote()
         for ip in {[host.ip for host in hosts]!r}]
ray.get([hold.ready.remote() for hold in holds])
print("moe-hosts: held", flush=True)
sys.stdin.read()
"""
        log = self.logs / f"hold-{'-'.join(host.name for host in hosts)}.log"
        with log.open("w") as out:
            proc = self.head.run([sys.executable, "-c", code], cwd=self.shared, stdin=subprocess.PIPE, stdout=out,
                                 stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "moe-hosts: held" in log.read_text(), timeout_s, alive=proc)
            yield
        finally:
            assert proc.stdin is not None
            proc.stdin.close()  # the driver ends, and with its job the actors
            try:
                proc.wait(timeout=60)
            finally:
                _kill_group(proc)

    def close(self) -> None:
        """Stop every process of the hosts, then remove every namespace (with any process still in it),
        veth, the bridge, the /etc/netns folders and ``root`` (the hosts' disks go with their processes). Safe
        to call after a
        setup that failed halfway, and twice."""
        for host in reversed(self.hosts):
            host.stop()
        for index, host in enumerate(self.hosts):
            _remove_namespace(host.ns)
            _ip("link", "del", f"moev{self.owner}h{index}")
        _ip("link", "del", self.bridge)
        shutil.rmtree(self.root, ignore_errors=True)
        self.hosts = []


class TrackingServer(Pausable):
    """A real ``mlflow server`` on ``host``, as a team runs one: bound to the host's IP (the other hosts and
    the root namespace reach it through the bridge), a SQLite store and proxied artifacts
    (``--serve-artifacts``) on the host's local disk, so no client needs a shared disk. ``wait_ready``
    returns once ``url`` answers ``/health`` (the constructor waits unless ``wait=False``); ``stop``."""

    def __init__(self, host: Host, port: int = MLFLOW_PORT, timeout_s: float = 300, wait: bool = True) -> None:
        folder = host.private / "mlflow"
        host.check_output(["mkdir", "-p", folder])
        self.host, self.url = host, f"http://{host.ip}:{port}"
        with (host.logs / f"{host.name}-mlflow.log").open("w") as log:
            # --allowed-hosts: MLflow answers 403 to a Host header outside localhost and the private ranges
            self.proc = host.run([MLFLOW, "server", "--host", host.ip, "--port", str(port), "--workers", "1",
                                  "--backend-store-uri", f"sqlite:///{folder}/server.db", "--serve-artifacts",
                                  "--artifacts-destination", str(folder / "artifacts"),
                                  "--allowed-hosts", f"{host.ip}:{port},{host.ip}"],
                                 cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                 # its job runner (7 processes, for GenAI jobs this harness has no use for)
                                 # would take a share of this machine's few CPUs from the hosts
                                 env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        if wait:
            self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float = 300) -> None:
        """Wait until the server answers ``/health`` (stopping it if it does not)."""
        import requests

        def answers() -> bool:
            try:
                return requests.get(f"{self.url}/health", timeout=5).status_code == 200
            except requests.RequestException:
                return False

        try:
            wait_for(answers, timeout_s, alive=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.resume()  # a stopped process would not act on SIGTERM
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        _kill_group(self.proc)


def write_on(host: Host, path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` as ``host`` sees it (e.g. on its local disk)."""
    host.check_output(["sh", "-c", 'printf %s "$1" > "$0"', path, text])


def read_on(host: Host, path: str | Path) -> str | None:
    """The text at ``path`` as ``host`` sees it, or None if there is no such file there."""
    proc = host.run(["cat", path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out, _ = proc.communicate(timeout=60)
    return out if proc.returncode == 0 else None


def resolve_on(host: Host, name: str) -> str:
    """The IPv4 address ``name`` resolves to on ``host`` (its /etc/hosts first, as glibc does)."""
    return host.check_output(["getent", "ahostsv4", name]).split()[0]


def _ip(*args: str) -> None:
    """``ip <args>``, whose failure is fine (removing what may not exist)."""
    assert IP is not None
    _run(IP, *args, check=False)


def _init_pid(keeper: subprocess.Popen | None) -> int | None:
    """The pid of the host's init process (the keeper's child, once it runs ``INIT``), or None yet."""
    if keeper is None:
        return None
    try:
        for child in psutil.Process(keeper.pid).children():
            if child.cmdline()[-1:] == [INIT]:
                return child.pid
    except psutil.Error:
        pass
    return None


def _free_subnet(owner: int) -> str:
    """``198.18.<k>`` whose /24 overlaps no address or route of the root namespace, starting from a ``k``
    the owner's pid picks (two runs side by side get different ones)."""
    assert IP is not None
    text = _run(IP, "-4", "-o", "addr", "show").stdout + _run(IP, "-4", "route", "show", "table", "all").stdout
    used = [ipaddress.ip_network(cidr, strict=False) for cidr in re.findall(r"(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", text)]
    for step in range(250):
        subnet = f"{SUBNET_PREFIX}.{(owner + step) % 250 + 1}"
        if not any(ipaddress.ip_network(f"{subnet}.0/24").overlaps(net) for net in used if net.prefixlen > 0):
            return subnet
    raise CommandFailed(f"no free {SUBNET_PREFIX}.<k>.0/24 subnet on this machine")


def _remove_namespace(ns: str) -> None:
    """SIGKILL every process in namespace ``ns`` (by pid: only our hosts' processes live there), then delete
    it (its veth end goes with it) and its /etc/netns folder."""
    assert IP is not None
    done = _run(IP, "netns", "pids", ns, check=False)
    for pid in (int(p) for p in done.stdout.split() if p.isdigit()) if done.returncode == 0 else ():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _ip("netns", "del", ns)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def _is_leftover(name: str, current: int) -> bool:
    """Whether ``name`` is one of ours (``LEFTOVER``) left behind: by a killed run with our pid, or by an
    owner process that no longer exists."""
    match = LEFTOVER.match(name)
    if match is None:
        return False
    owner = int(match[1])
    if owner == current:
        return True
    try:
        os.kill(owner, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_leftovers(current: int) -> None:
    """Remove what killed runs left behind (``_is_leftover``): namespaces and the processes in them, veths,
    bridges, /etc/netns folders and /var/tmp/moe-hosts-<pid> folders."""
    assert IP is not None
    for line in _run(IP, "netns", "list", check=False).stdout.splitlines():
        ns = line.split(" ", 1)[0]
        if ns.startswith("moe-h") and _is_leftover(ns, current):
            _remove_namespace(ns)
    for line in _run(IP, "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name.startswith(("moebr", "moev")) and _is_leftover(name, current):
            _ip("link", "del", name)
    for folder in [*Path("/etc/netns").glob("moe-h*"), *Path("/var/tmp").glob("moe-hosts-*")]:
        if _is_leftover(folder.name, current):
            shutil.rmtree(folder, ignore_errors=True)
