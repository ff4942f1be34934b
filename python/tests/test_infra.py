"""The harness itself (needs no slim_agents): nodes start, federate, restart."""

from conftest import ID_DEFAULT


def test_federated_nodes_link_up(nodes):
    a, b = nodes
    assert a.proc.alive() and b.proc.alive()
    assert a.port != b.port
    # B dialled A; the link is authenticated both ways (allow_all grants peer).
    assert "peer link up" in "\n".join(b.proc.lines)


def test_policy_node_and_workload_api(policy_node, pki):
    assert policy_node.proc.alive()
    ep = pki.socket_for(ID_DEFAULT)
    assert ep.startswith("unix://")
    assert pki.socket_for(ID_DEFAULT) == ep  # one server per identity, reused


def test_restartable_node_restarts_on_same_port(restartable_node):
    port = restartable_node.port
    restartable_node.restart()
    assert restartable_node.port == port and restartable_node.proc.alive()
    assert f"listening on 127.0.0.1:{port}" in "\n".join(restartable_node.proc.lines)
