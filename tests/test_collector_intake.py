"""The collector's intake over gRPC, tested as a real `lema serve collector` process on 127.0.0.1 with an SQLite
store: problems sent to AddProblems land in the intake table that `lema collect --follow` consumes."""

from __future__ import annotations

import grpc
import pytest
from conftest import free_port, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lema.core.clients import CollectorClient
from lema.core.store import repository as repo
from lema.core.store.db import open_store
from lema.v1 import collector_pb2 as cpb
from lema.v1 import collector_pb2_grpc
from lema.v1 import common_pb2 as pb

MAX_ITEMS = 50


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collector")
    store = folder / "intake.db"
    port = free_port()
    server = start_server(["serve", "collector", "--store", str(store), "--port", str(port), "--host", "127.0.0.1",
                           "--max-items", str(MAX_ITEMS)], port, folder / "server.log")
    yield server, store
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def stub(collector):
    server, _ = collector
    with grpc.insecure_channel(server.address) as channel:
        yield collector_pb2_grpc.CollectorStub(channel)


VALID = [
    pb.Problem(kind=pb.DATASET_KIND_GSM8K, question="Tom has 3 apples and buys 4 more. How many apples?",
               gold_answer="7"),
    pb.Problem(id="live-math-1", kind=pb.DATASET_KIND_MATH, question=r"What is $\frac{1}{2} + \frac{1}{4}$?",
               gold_answer=r"\frac{3}{4}", source="grpc-test", metadata={"origin": "test"}),
    pb.Problem(kind=pb.DATASET_KIND_GSM8K, question="Sara has 10 pens and loses 4. How many pens?",
               gold_answer="6"),
]
NO_KIND = pb.Problem(question="What is 1 + 1?", gold_answer="2")                       # kind UNSPECIFIED
NO_QUESTION = pb.Problem(kind=pb.DATASET_KIND_GSM8K, question="", gold_answer="1")


def test_add_problems_keeps_the_valid_and_reports_each_invalid(collector, stub):
    _, store = collector
    items = [VALID[0], NO_KIND, VALID[1], NO_QUESTION, VALID[2]]
    response = stub.AddProblems(cpb.AddProblemsRequest(problems=items), timeout=30)
    assert (response.valid, response.added, response.queued) == (3, 3, 3)
    assert [r.index for r in response.rejected] == [1, 3]
    assert response.rejected[0].reason.startswith("kind:") and "DATASET_KIND_UNSPECIFIED" in response.rejected[0].reason
    assert response.rejected[1].reason.startswith("question:")
    assert len(response.problem_ids) == 3 and response.problem_ids[1] == "live-math-1"

    # The rows are really in the store, queued for a `--follow` collector, with their fields.
    sessions = open_store(str(store))
    with sessions() as session:
        assert repo.pending_intake(session, 100) == list(response.problem_ids)
        stored = {p.id: p for p in repo.problems_by_id(session, list(response.problem_ids))}
    math = stored["live-math-1"]
    assert (math.kind, math.gold_answer, math.source, math.meta) == ("math", r"\frac{3}{4}", "grpc-test",
                                                                     {"origin": "test"})
    assert stored[response.problem_ids[0]].source == "intake"  # the JSONL default
    sessions.kw["bind"].dispose()

    # The same problems again: nothing new is stored or queued.
    again = stub.AddProblems(cpb.AddProblemsRequest(problems=items), timeout=30)
    assert (again.valid, again.added, again.queued, len(again.rejected)) == (3, 0, 0, 2)
    assert list(again.problem_ids) == list(response.problem_ids)


def test_same_reasons_as_a_jsonl_line(stub):
    # An item is validated like one line of `lema problems add`: the reason names the same field the same way.
    _, errors = repo.parse_problem_lines(['{"kind": "gsm8k", "question": "", "gold_answer": "1"}'])
    response = stub.AddProblems(cpb.AddProblemsRequest(problems=[NO_QUESTION]), timeout=30)
    assert (response.valid, response.added, response.queued) == (0, 0, 0)
    assert [(r.index, r.reason) for r in response.rejected] == [(0, errors[0][1])]


def test_empty_and_oversized_requests_are_invalid_arguments(stub):
    with pytest.raises(grpc.RpcError) as empty:
        stub.AddProblems(cpb.AddProblemsRequest(), timeout=30)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "empty" in empty.value.details()

    with pytest.raises(grpc.RpcError) as big:
        stub.AddProblems(cpb.AddProblemsRequest(problems=[VALID[0]] * (MAX_ITEMS + 1)), timeout=30)
    assert big.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"the limit is {MAX_ITEMS}" in big.value.details()


def test_health_serving(collector):
    server, _ = collector
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "lema.v1.Collector"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_stats_match_the_store(collector, stub):
    server, store = collector
    stats = stub.GetStats(cpb.GetStatsRequest(), timeout=30)
    sessions = open_store(str(store))
    with sessions() as session:
        expected = repo.counts(session)
    sessions.kw["bind"].dispose()
    assert expected["problems"] >= 3 and expected["intake_pending"] == expected["problems"]
    assert {f.name: getattr(stats, f.name) for f in stats.DESCRIPTOR.fields} == expected

    # The client helper (deadline on every call) sees the same.
    with CollectorClient(server.address, timeout_s=30) as client:
        assert client.stats() == expected
        result = client.add_problems([VALID[2], NO_KIND])
    assert (result.valid, result.added, result.queued) == (1, 0, 0)
    assert [index for index, _ in result.rejected] == [1]


@pytest.mark.parametrize("service", ["collector", "verifier", "trainer"])
def test_an_out_of_range_port_is_rejected_naming_the_field(service):
    # every service section redeclares its default port; the 0-65535 bound must hold in each of them
    import subprocess

    from conftest import lema_command

    done = subprocess.run([*lema_command(), "serve", service, "--port", "70000"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "port" in done.stderr and "65535" in done.stderr, done.stderr
