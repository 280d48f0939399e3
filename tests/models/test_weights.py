"""modinv.models.weights: the network probe, seen by the ``network_attempts`` guard the offline
tests rely on (so that their ``network_attempts == []`` can fail)."""

from __future__ import annotations

from modinv.models.weights import host_reachable


def test_the_network_guard_sees_and_refuses_a_probe(network_attempts):
    assert host_reachable("huggingface.co", timeout=0.1) is False
    assert network_attempts == ["create_connection ('huggingface.co', 443)"]
