"""Collectives on the interface that carries Ray's node IP.

Gloo (and NCCL's bootstrap) advertise to their peers the address that the machine's hostname resolves
to. Debian's and Ubuntu's installers map the hostname to 127.0.1.1 in ``/etc/hosts``, so on such a
machine a worker tells the others to reach it on loopback, and a DDP run across machines fails in
gloo (``connectFullMesh failed ... remote=[127.0.0.1]``). Ray itself is right about each node's
address, so every Train worker is pointed at the interface that carries its own node's Ray IP
(``GLOO_SOCKET_IFNAME``, ``NCCL_SOCKET_IFNAME``) before the process group starts; a value already in
the worker's environment is kept.

``TorchConfig`` has no hook for this: ``NodeInterfaceTorchConfig`` subclasses Ray's torch backend
(``ray.train.torch.config._TorchBackend``) to run ``pin_collectives_to_node_interface`` on each worker
first. Check it when upgrading Ray.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ray.train.torch import TorchConfig
from ray.train.torch.config import _TorchBackend

SOCKET_IFNAME_VARS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")


def interface_for(ip: str) -> str | None:
    """The name of the network interface that holds IPv4 address ``ip`` on this machine, or None."""
    import psutil  # a Ray dependency

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == ip for a in addresses):
            return name
    return None


def pin_collectives_to_node_interface() -> dict[str, str]:
    """In a Ray worker: set each of ``SOCKET_IFNAME_VARS`` that is unset to the interface of this node's
    Ray IP; returns what the worker's environment now says (empty if no interface holds that IP)."""
    import ray

    name = interface_for(ray.util.get_node_ip_address())
    if name is None:
        return {}
    for var in SOCKET_IFNAME_VARS:
        os.environ.setdefault(var, name)
    return {var: os.environ[var] for var in SOCKET_IFNAME_VARS}


class _NodeInterfaceTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):  # noqa: ANN001 (Ray's signature)
        worker_group.execute(pin_collectives_to_node_interface)
        super().on_start(worker_group, backend_config)


@dataclass
class NodeInterfaceTorchConfig(TorchConfig):
    """Ray's ``TorchConfig``, with each worker's collectives on its node's Ray interface (module docstring)."""

    @property
    def backend_cls(self):  # noqa: ANN201 (Ray's property)
        return _NodeInterfaceTorchBackend
