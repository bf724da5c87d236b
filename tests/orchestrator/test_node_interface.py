"""Collectives go out on the interface of the node's Ray IP (orchestrator/node_interface.py)."""

from __future__ import annotations

import pytest

from orchestrator.node_interface import SOCKET_IFNAME_VARS, interface_for, pin_collectives_to_node_interface


def test_the_interface_holding_an_address_is_found() -> None:
    assert interface_for("127.0.0.1") == "lo"
    assert interface_for("192.0.2.1") is None  # TEST-NET-1: on no interface here


def test_a_worker_is_pinned_to_its_node_ip_interface_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.util

    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "127.0.0.1")
    for var in SOCKET_IFNAME_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth7")  # the user's own choice stays
    assert pin_collectives_to_node_interface() == {"GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "eth7"}
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "192.0.2.1")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    assert pin_collectives_to_node_interface() == {}
