"""Robots as their own processes: the messages, the team network against the one-process network, what is
dropped and why, the bad input a robot refuses (``optimizers/comm/team_*.py``, ``experiments/team_run.py``)."""

from __future__ import annotations

import threading

import networkx as nx
import pytest
import torch

from experiments import team_launch, team_run
from experiments.config import validate_config
from experiments.pair import block_checkpoint
from foundation.schema import ConfigError
from optimizers.comm import team_messages as tm
from optimizers.comm.network import InProcessNetwork
from optimizers.comm.team_network import TeamConflictError, TeamNetwork
from optimizers.comm.team_transport import LoopbackHub
from tests.helpers.distributed import free_port_block

KEY = b"k" * 32
RUN = tm.run_id("a config")


def team(graph, hub=None, key=KEY, deadline_s=5.0, **kwargs):
    hub = hub or LoopbackHub()
    networks = [TeamNetwork(graph, i, hub.transport(), key, RUN, "pair", deadline_s=deadline_s, hello_s=0.02,
                            dtype=torch.float64, **kwargs) for i in range(graph.number_of_nodes())]
    for net in networks:
        assert net.wait_for_neighbours(5.0) == []
    return hub, networks


def each_robot(networks, call):
    """``call(i, network)`` for every robot at once (each in its own thread, as robots are); their results."""
    results = [None] * len(networks)
    errors = []

    def go(i):
        try:
            results[i] = call(i, networks[i])
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(networks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


def close(networks):
    for n in networks:
        n.close()


# ---------------------------------------------------------------------------------------------- messages
def test_a_message_round_trips_and_every_damage_is_named():
    row = torch.randn(7, dtype=torch.float64)
    data = tm.encode(KEY, RUN, tm.ROW, 3, 1, 42, "theta", row)
    message = tm.decode(KEY, RUN, data)
    assert isinstance(message, tm.Message)
    assert (message.sender, message.incarnation, message.round, message.channel) == (3, 1, 42, "theta")
    assert torch.equal(message.row, row) and message.row.dtype == torch.float64
    flipped = bytearray(data)
    flipped[60] ^= 1  # a bit changed on the way: the checksum says so
    assert tm.decode(KEY, RUN, bytes(flipped)) == "corrupt"
    assert tm.decode(KEY, RUN, data[:20]) == "corrupt"
    assert tm.decode(b"another key of 32 bytes........", RUN, data) == "unauthenticated"
    assert tm.decode(KEY, tm.run_id("another config"), data) == "foreign_run"
    # an outsider who recomputes the checksum still lacks the key
    forged = tm.encode(b"the outsider's key, not the team", RUN, tm.ROW, 3, 1, 43, "theta", row)
    assert tm.decode(KEY, RUN, forged) == "unauthenticated"


def test_the_team_key_comes_from_a_file_or_the_environment_and_is_long_enough(tmp_path):
    path = tmp_path / "team.key"
    path.write_text("0123456789abcdef0123\n")
    assert tm.read_team_key(str(path), environ={}) == b"0123456789abcdef0123"
    assert tm.read_team_key(None, environ={tm.KEY_ENVIRONMENT: "x" * 20}) == b"x" * 20
    with pytest.raises(tm.TeamKeyError, match="no team key"):
        tm.read_team_key(None, environ={})
    with pytest.raises(tm.TeamKeyError, match="at least 16"):
        tm.read_team_key(None, environ={tm.KEY_ENVIRONMENT: "short"})
    with pytest.raises(tm.TeamKeyError, match="cannot read"):
        tm.read_team_key(str(tmp_path / "missing.key"), environ={})


# ---------------------------------------------------------------------------------------------- the network
@pytest.mark.parametrize("graph", [nx.cycle_graph(6), nx.wheel_graph(5), nx.path_graph(3)])
def test_with_every_row_there_the_team_computes_the_one_process_products_bit_for_bit(graph):
    n = graph.number_of_nodes()
    hub, networks = team(graph)
    x = torch.randn(n, 9, dtype=torch.float64)
    results = each_robot(networks, lambda i, net: (net.mix(x[i:i + 1], "theta"),
                                                   net.neighbor_sum(x[i:i + 1] * 2, "other")))
    reference = InProcessNetwork(graph, dtype=torch.float64)
    assert torch.equal(torch.cat([r[0] for r in results]), reference.mix(x))
    assert torch.equal(torch.cat([r[1] for r in results]), reference.neighbor_sum(x * 2))
    assert all(net.counts["used_fresh"] == 2 * len(net.neighbours) and not net.counts["missing"] for net in networks)
    close(networks)


def test_edge_messages_reach_the_other_end_of_each_edge():
    graph = nx.cycle_graph(4)
    hub, networks = team(graph)
    reference = InProcessNetwork(graph, dtype=torch.float64)
    # message of edge (i -> j) is 10 i + j, sent by i back to j
    src, dst = reference.in_edge_ends()
    messages = (10 * dst + src).to(torch.float64).unsqueeze(1)  # edge e: from dst to src... one row per in-edge
    expected, arrived = reference.edge_exchange(messages, "edges")
    rows = {}
    for net in networks:
        s, d = net.in_edge_ends()
        rows[net.robot] = (10 * d + s).to(torch.float64).unsqueeze(1)
    results = each_robot(networks, lambda i, net: net.edge_exchange(rows[i], "edges"))
    got = torch.cat([r[0] for r in results])
    assert torch.equal(got, expected) and all(bool(r[1].all()) for r in results) and bool(arrived.all())
    close(networks)


def test_a_silent_neighbour_leaves_the_held_row_then_the_robot_s_own():
    graph = nx.path_graph(3)  # 0 - 1 - 2
    hub, networks = team(graph, deadline_s=0.2, max_staleness=1)
    x = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    each_robot(networks, lambda i, net: net.mix(x[i:i + 1], "theta"))  # round 1: everyone there
    hub.filter = lambda key, data: None if key.startswith("nndt/pair/2/") else data  # robot 2 falls silent
    middle = networks[1]
    w = InProcessNetwork(graph, dtype=torch.float64).mixing_matrix()[1]
    second = middle.mix(x[1:2] * 10, "theta")  # robot 0 has not sent round 2: held row of round 1 from both
    assert middle.counts["used_held"] == 2
    assert torch.allclose(second, 20 + w[0] * (1 - 20) + w[2] * (4 - 20))
    third = middle.mix(x[1:2] * 10, "theta")  # round 3: round 1 is 2 rounds old, more than max_staleness 1
    assert middle.counts["missing"] == 2 and torch.equal(third, x[1:2] * 10)
    close(networks)


def test_duplicates_old_rounds_outsiders_and_strangers_are_dropped_and_counted():
    graph = nx.path_graph(2)
    hub, networks = team(graph)
    robot = networks[0]
    row = torch.ones(3)
    send = lambda data: hub.deliver("nndt/pair/1/theta", data)  # noqa: E731
    for r in (5, 5, 2, 6, 7, 8, 9, 3):
        send(tm.encode(KEY, RUN, tm.ROW, 1, 0, r, "theta", row))
    send(tm.encode(b"an outsider's key of some length", RUN, tm.ROW, 1, 0, 10, "theta", row * 100))
    send(tm.encode(KEY, tm.run_id("another run"), tm.ROW, 1, 0, 11, "theta", row * 100))
    send(tm.encode(KEY, RUN, tm.ROW, 7, 0, 12, "theta", row * 100))  # robot 7 is nobody's neighbour here
    send(b"\x00" * 80)
    counts = robot.counts
    assert counts["dropped_duplicate"] == 1  # the second round 5
    assert counts["dropped_old"] == 1  # round 3 after rounds 6 to 9 filled the kept rounds
    assert counts["dropped_unauthenticated"] == 1 and counts["dropped_foreign_run"] == 1
    assert counts["dropped_not_a_neighbour"] == 1 and counts["dropped_corrupt"] == 1
    # a restart (a higher incarnation) is newer than any round before it
    send(tm.encode(KEY, RUN, tm.ROW, 1, 1, 1, "theta", row * 3))
    assert robot.newest_rows("theta")[0].row.tolist() == [3.0, 3.0, 3.0]
    close(networks)


def test_an_outsider_changes_nothing_the_team_computes():
    graph = nx.cycle_graph(5)
    x = torch.randn(5, 4, dtype=torch.float64)

    def run(outsider: bool):
        hub, networks = team(graph)
        if outsider:
            forged = tm.encode(b"not the team's key, but long....", RUN, tm.ROW, 1, 0, 1, "theta", x[0] * 1e6)
            original = hub.deliver

            def deliver(key, data):
                if key.endswith("/theta"):
                    original(key.rsplit("/", 2)[0] + "/1/theta", forged)  # before every real row, a forged one
                original(key, data)
            hub.deliver = deliver
        out = each_robot(networks, lambda i, net: net.mix(net.mix(x[i:i + 1], "theta"), "theta"))
        dropped = sum(net.counts["dropped_unauthenticated"] for net in networks)
        close(networks)
        return torch.cat(out), dropped

    clean, none = run(False)
    attacked, dropped = run(True)
    assert none == 0 and dropped > 0 and torch.equal(clean, attacked)


def test_a_second_process_with_one_index_and_a_robot_with_the_wrong_key_are_refused():
    graph = nx.path_graph(2)
    hub, networks = team(graph)
    twin = TeamNetwork(graph, 0, hub.transport(), KEY, RUN, "pair", hello_s=0.02)
    with pytest.raises(TeamConflictError, match="another process runs as robot 0"):
        twin.wait_for_neighbours(2.0)
    close(networks + [twin])

    hub = LoopbackHub()
    good = TeamNetwork(graph, 1, hub.transport(), KEY, RUN, "pair", hello_s=0.02)
    wrong = TeamNetwork(graph, 0, hub.transport(), b"a wrong key that is long enough!", RUN, "pair", hello_s=0.02)
    with pytest.raises(tm.TeamKeyError, match="failed authentication"):
        wrong.wait_for_neighbours(0.5)
    close([good, wrong])


def test_a_robot_checkpoint_resumes_only_its_own_rows():
    part = {"robots": [3, 4, 10], "state": {
        "optimizer": {"tracker": torch.full((1, 2), 3.0)}, "problem": {"theta": torch.full((1, 2), 3.0), "history": {}},
        "network": {"bytes_sent": torch.tensor([7.0], dtype=torch.float64), "exchanges": 4,
                    "edges": torch.zeros(0, 2, dtype=torch.long),
                    "held": {"edge_ids": torch.zeros(0, 2, dtype=torch.long), "last_rows": {}, "arrived": {}}}}}
    state = block_checkpoint({"round": 9, "parts": [part]}, 3, 4, 10)
    assert state["problem"]["theta"].tolist() == [[3.0, 3.0]] and state["network"]["bytes_sent"].tolist() == [7.0]
    with pytest.raises(ConfigError, match="holds robots 3 to 3"):
        block_checkpoint({"round": 9, "parts": [part]}, 2, 3, 10)


def test_team_histories_join_robot_rows_with_nan_for_a_robot_without_them():
    one = {"round": [0, 5], "top1_accuracy": [torch.tensor([0.1]), torch.tensor([0.5])]}
    two = {"round": [0, 5], "top1_accuracy": [torch.tensor([0.2]), torch.tensor([0.6])]}
    joined = team_launch.join_histories([one, {}, two])
    assert joined["round"] == [0, 5]
    final = joined["top1_accuracy"][1]
    assert final[0] == 0.5 and final[2] == 0.6 and torch.isnan(final[1])


# ---------------------------------------------------------------------------------------------- bad input
def base_config(**team):
    return {"experiment": {"name": "t", "problem": "logreg", "graph": {"num_nodes": 4, "type": "cycle"},
                           "team": team},
            "problem_configs": {"p": {"problem_name": "dsgd", "optimizer_config": {
                "alg_name": "dsgd", "outer_iterations": 3, "alpha0": 0.1}}}}


@pytest.mark.parametrize("team, message", [
    ({"deadline_ms": 0}, "deadline_ms"),
    ({"deadline_ms": -5}, "deadline_ms"),
    ({"max_staleness": -1}, "max_staleness"),
    ({"hosts": ["a", "b"]}, "2 hosts for 4 robots"),
    ({"hosts": ["a b"]}, "not a host name"),
    ({"key_prefix": "a/b"}, "key_prefix"),
])
def test_team_settings_out_of_range_are_refused_with_one_line(team, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(base_config(**team))


def test_what_a_team_of_processes_cannot_run_is_refused():
    cfg = validate_config(base_config())
    assert team_run.team_unsupported(cfg["experiment"], cfg) is None
    cfg["experiment"]["links"]["drop_prob"] = 0.1
    assert "no simulated links" in team_run.team_unsupported(cfg["experiment"], cfg)
    ports = validate_config(base_config(base_port=65534))  # a valid config; too few ports only for a team
    assert "passes port 65535" in team_run.team_unsupported(ports["experiment"], ports)


def test_robot_py_refuses_an_unknown_index_and_a_missing_key_before_writing(tmp_path, capsys, monkeypatch):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(base_config()))
    monkeypatch.delenv(tm.KEY_ENVIRONMENT, raising=False)
    out = tmp_path / "out"
    assert team_launch.robot_main([str(config), "--robot", "4", "--output-dir", str(out)]) == 2
    assert "--robot 4: the team has robots 0 to 3" in capsys.readouterr().err
    assert team_launch.robot_main([str(config), "--robot", "1", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no team key" in err[0]
    assert not out.exists()


def test_team_py_refuses_bad_command_lines_before_writing(tmp_path, capsys):
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(base_config()))
    out = tmp_path / "out"
    assert team_launch.main([str(config)]) == 2
    assert "--output-dir: required" in capsys.readouterr().err
    assert team_launch.main([str(config), "--output-dir", str(out), "--max-restarts", "-1"]) == 2
    assert team_launch.main(["--resume", str(tmp_path)]) == 2
    assert "not a team's output folder" in capsys.readouterr().err
    assert team_launch.main([str(config), "--output-dir", str(out), "--pairs", "nope"]) == 2
    assert not out.exists()


def test_over_zenoh_three_robots_compute_the_one_process_product():
    from optimizers.comm.team_transport import ZenohTransport, endpoint

    graph = nx.path_graph(3)
    base = free_port_block(3)
    transports = [ZenohTransport([endpoint("127.0.0.1", base + i)],
                                 [endpoint("127.0.0.1", base + j) for j in graph.neighbors(i)],
                                 block_when_congested=True) for i in range(3)]
    try:
        networks = [TeamNetwork(graph, i, transports[i], KEY, RUN, "pair", deadline_s=10.0, hello_s=0.05,
                                dtype=torch.float64) for i in range(3)]
        for net in networks:
            assert net.wait_for_neighbours(20.0) == []
        x = torch.randn(3, 1000, dtype=torch.float64)
        results = each_robot(networks, lambda i, net: net.mix(x[i:i + 1], "theta"))
        assert torch.equal(torch.cat(results), InProcessNetwork(graph, dtype=torch.float64).mix(x))
        assert all(t.bytes_published > 8000 for t in transports)
        close(networks)
    finally:
        for t in transports:
            t.close()


def test_through_a_router_clients_compute_the_same_product():
    import json as _json

    import zenoh

    from optimizers.comm.team_transport import ZenohTransport, endpoint

    graph = nx.cycle_graph(3)
    router_port = free_port_block(1)
    config = zenoh.Config()
    config.insert_json5("mode", _json.dumps("router"))
    config.insert_json5("listen/endpoints", _json.dumps([endpoint("127.0.0.1", router_port)]))
    config.insert_json5("scouting/multicast/enabled", "false")
    router = zenoh.open(config)
    transports = [ZenohTransport([], [], router=endpoint("127.0.0.1", router_port), block_when_congested=True)
                  for _ in range(3)]
    try:
        networks = [TeamNetwork(graph, i, transports[i], KEY, RUN, "pair", deadline_s=10.0, hello_s=0.05,
                                dtype=torch.float64) for i in range(3)]
        for net in networks:
            assert net.wait_for_neighbours(20.0) == []
        x = torch.randn(3, 50, dtype=torch.float64)
        results = each_robot(networks, lambda i, net: net.neighbor_sum(x[i:i + 1], "theta"))
        assert torch.equal(torch.cat(results), InProcessNetwork(graph, dtype=torch.float64).neighbor_sum(x))
        close(networks)
    finally:
        for t in transports:
            t.close()
        router.close()


@pytest.mark.parametrize("block, message", [
    (None, "needs a list of loss rates"),
    ({"packet_loss": []}, "needs a list of loss rates"),
    ({"packet_loss": [0.1, 1.0]}, "1.0 is not a loss rate"),
    ({"packet_loss": [0.1, 0.1]}, "given twice"),
    ({"packet_loss": [0.1], "rounds": 3}, "unknown key"),
])
def test_a_real_radio_study_refuses_bad_loss_rates(block, message):
    from experiments.real_radio import study_plan

    raw = base_config()
    if block is not None:
        raw["real_radio"] = block
    with pytest.raises(ConfigError, match=message):
        study_plan(raw)
