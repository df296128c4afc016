"""The verifier gRPC service, tested as a real `lema serve verifier` process on 127.0.0.1."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time

import grpc
import pytest
from conftest import free_port, require_shared_data, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lema.v1 import common_pb2 as pb
from lema.v1 import verifier_pb2 as vpb
from lema.v1 import verifier_pb2_grpc

GSM8K, MATH = pb.DATASET_KIND_GSM8K, pb.DATASET_KIND_MATH
OK = pb.VERDICT_REASON_MATCHED


@pytest.fixture(scope="module")
def stub(verifier_channel):
    return verifier_pb2_grpc.VerifierStub(verifier_channel)


def verify(stub, kind, gold, candidate, answer_only=False, timeout=30):
    request = vpb.VerifyRequest(kind=kind, gold_answer=gold, candidate=candidate, candidate_is_answer=answer_only)
    return stub.Verify(request, timeout=timeout).verdict


def verify_batch(stub, kind, pairs, answer_only=False, timeout=600):
    items = [
        vpb.VerifyRequest(kind=kind, gold_answer=g, candidate=c, candidate_is_answer=answer_only, id=str(i))
        for i, (g, c) in enumerate(pairs)
    ]
    responses = list(stub.VerifyBatch(vpb.VerifyBatchRequest(items=items), timeout=timeout))
    assert [r.index for r in responses] == list(range(len(items))), "order not preserved"
    assert [r.id for r in responses] == [str(i) for i in range(len(items))]
    return [r.verdict for r in responses]


def gsm8k_golds() -> list[str]:
    path = require_shared_data("gsm8k/test.jsonl")
    return [json.loads(line)["answer"].split("####")[-1].strip() for line in path.open()]


def math500_golds() -> list[str]:
    path = require_shared_data("math/test500.jsonl")
    return [json.loads(line)["answer"] for line in path.open()]


def perturb(answer: str) -> str:
    """A different answer: bump the first digit (None when there is no digit)."""
    digits = [m.start() for m in re.finditer(r"\d", answer)]
    if digits:
        i = digits[0]
        return answer[:i] + str((int(answer[i]) + 1) % 10) + answer[i + 1 :]
    return None


# --- health and reflection --------------------------------------------------------------------------


def test_health_serving(verifier_channel):
    health = health_pb2_grpc.HealthStub(verifier_channel)
    for service in ("", "lema.v1.Verifier"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_service(verifier_channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(verifier_channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"lema.v1.Verifier", "grpc.health.v1.Health"} <= names


# --- the datasets --------------------------------------------------------------------------------------


def test_every_gsm8k_gold_verifies_against_itself(stub):
    golds = gsm8k_golds()
    assert len(golds) == 1319
    solutions = [f"Some reasoning.\n#### {g}" for g in golds]
    assert all(v.correct for v in verify_batch(stub, GSM8K, zip(golds, solutions)))
    answer_is = [f"Step 1: reasoning.\nThe answer is {g}." for g in golds]
    verdicts = verify_batch(stub, GSM8K, zip(golds, answer_is))
    assert all(v.correct and v.extraction_method == pb.EXTRACTION_METHOD_ANSWER_IS for v in verdicts)


def test_every_math500_gold_verifies_against_itself(stub):
    golds = math500_golds()
    assert len(golds) == 500
    solutions = [f"We compute things. Therefore the answer is $\\boxed{{{g}}}$." for g in golds]
    verdicts = verify_batch(stub, MATH, zip(golds, solutions))
    failures = [(g, v.reason, v.detail) for g, v in zip(golds, verdicts) if not v.correct]
    assert not failures, failures[:10]
    assert all(v.extraction_method == pb.EXTRACTION_METHOD_BOXED for v in verdicts)


def test_perturbed_gsm8k_golds_verify_false(stub):
    golds = gsm8k_golds()
    wrong = [str(int(g.replace(",", "")) + 1) for g in golds]
    verdicts = verify_batch(stub, GSM8K, zip(golds, wrong), answer_only=True)
    assert not any(v.correct for v in verdicts)
    assert all(v.reason == pb.VERDICT_REASON_MISMATCH for v in verdicts)


def test_perturbed_math500_golds_verify_false(stub):
    pairs = [(g, p) for g in math500_golds() if (p := perturb(g)) is not None]
    assert len(pairs) > 400
    verdicts = verify_batch(stub, MATH, pairs, answer_only=True)
    wrongly_accepted = [pair for pair, v in zip(pairs, verdicts) if v.correct]
    assert not wrongly_accepted, wrongly_accepted[:10]


@pytest.mark.parametrize(
    "gold, candidate",
    [
        (r"\frac{1}{2}", "0.5"),
        (r"\frac{1}{2}", r"\dfrac12"),
        ("0.5", r"\frac{1}{2}"),
        ("3", "x = 3"),
        ("1000", "1,000"),
        ("1,000", "1000"),
        (r"\{1, 2, 3\}", r"\{3, 1, 2\}"),
        ("1, 2, 3", "3, 2, 1"),
        (r"(1, 2)", r"\left(1, 2\right)"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \pi/2)"),
        ("18", r"\$18"),
        ("25", r"25\%"),
        ("12", r"12 \text{ cm}"),
        ("5", "5.00"),
        (r"\text{Evelyn}", "Evelyn"),
        (r"\text{(C)}", "C"),
        (r"2\sqrt{2}", r"\sqrt{8}"),
        ("52_8", "52_{8}"),
        ("52_8", "52"),
    ],
)
def test_equivalent_rewrites(stub, gold, candidate):
    for kind in (MATH, GSM8K):
        verdict = verify(stub, kind, gold, candidate, answer_only=True)
        if kind == GSM8K and not verdict.correct:
            continue  # word-problem mode need not understand LaTeX sets; MATH mode must
        assert verdict.correct, (kind, verdict)
    assert verify(stub, MATH, gold, candidate, answer_only=True).reason == OK


@pytest.mark.parametrize(
    "gold, candidate",
    [(r"\frac{1}{2}", "0.51"), ("3", "x = 4"), (r"\{1, 2\}", r"\{1, 3\}"), (r"\text{Evelyn}", "Evelny"), ("1,000", "100"), ("52_8", "52_9"),
     ("4210_{5}", "4211_5")],
)
def test_non_equivalent_answers(stub, gold, candidate):
    assert not verify(stub, MATH, gold, candidate, answer_only=True).correct


def test_verdict_fields(stub):
    v = verify(stub, GSM8K, "1000", "Step 1: 10 * 100 = 1,000.\nThe answer is $1,000.")
    assert v.correct and v.reason == OK
    assert v.extracted_answer == "$1,000" and v.extraction_method == pb.EXTRACTION_METHOD_ANSWER_IS
    assert v.normalized_candidate == v.normalized_gold == "1000"
    fallback = verify(stub, GSM8K, "9", "so she has 9 apples left")
    assert fallback.correct and fallback.extraction_method == pb.EXTRACTION_METHOD_LAST_NUMBER
    none = verify(stub, GSM8K, "9", "I don't know")
    assert not none.correct and none.reason == pb.VERDICT_REASON_NO_ANSWER_FOUND


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_fields, message",
    [
        (dict(kind=GSM8K, gold_answer="1", candidate=""), "candidate is empty"),
        (dict(kind=GSM8K, gold_answer="  ", candidate="1"), "gold_answer is empty"),
        (dict(kind=pb.DATASET_KIND_UNSPECIFIED, gold_answer="1", candidate="1"), "kind must be"),
        (dict(kind=99, gold_answer="1", candidate="1"), "got 99"),
        (dict(kind=MATH, gold_answer="1", candidate="x" * 200_001), "limit is 200000"),
        (dict(kind=MATH, gold_answer="1" * 10_001, candidate="1"), "gold_answer has 10001"),
    ],
)
def test_bad_input_is_invalid_argument(stub, request_fields, message):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        stub.Verify(vpb.VerifyRequest(**request_fields), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert time.monotonic() - started < 2


def test_bad_batch_item_names_its_index(stub):
    items = [vpb.VerifyRequest(kind=GSM8K, gold_answer="1", candidate="1")] * 3
    items.append(vpb.VerifyRequest(kind=GSM8K, gold_answer="1", candidate=""))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.VerifyBatch(vpb.VerifyBatchRequest(items=items), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "items[3]" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        list(stub.VerifyBatch(vpb.VerifyBatchRequest(items=[]), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- pathological input: bounded time, never blocking others -------------------------------------------

PATHOLOGICAL = {
    "power tower": r"10^{10^{10^{10}}}",
    "100k-char sum": "1+" * 50_000 + "1",
    "deeply nested braces": "{" * 5000 + "1" + "}" * 5000,
}


@pytest.mark.parametrize("name", list(PATHOLOGICAL))
def test_pathological_input_times_out_in_bounded_time(stub, name):
    started = time.monotonic()
    verdict = verify(stub, MATH, "5", PATHOLOGICAL[name], answer_only=True)
    elapsed = time.monotonic() - started
    assert not verdict.correct
    assert verdict.reason == pb.VERDICT_REASON_TIMEOUT, verdict
    assert elapsed < 6, f"{name} took {elapsed:.1f}s (item timeout is 2s)"


def test_huge_answer_is_answered_quickly(stub):
    started = time.monotonic()
    verdict = verify(stub, MATH, "5", "9" * 100_000, answer_only=True)
    assert not verdict.correct and time.monotonic() - started < 6


def test_slow_item_does_not_block_other_requests(stub):
    results = {}

    def slow():
        results["slow"] = verify(stub, MATH, "5", PATHOLOGICAL["power tower"], answer_only=True)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)  # the tower now occupies one worker
    started = time.monotonic()
    fast = verify(stub, MATH, r"\frac{1}{2}", "0.5", answer_only=True)
    numeric = verify(stub, GSM8K, "18", "The answer is 18.")
    fast_elapsed = time.monotonic() - started
    thread.join()
    assert fast.correct and numeric.correct
    assert fast_elapsed < 1.5, f"a simple request waited {fast_elapsed:.2f}s behind a slow one"
    assert results["slow"].reason == pb.VERDICT_REASON_TIMEOUT


def test_deadline_is_honoured(stub):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        verify(stub, MATH, "5", PATHOLOGICAL["power tower"], answer_only=True, timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2
    assert verify(stub, MATH, r"\frac{1}{2}", "0.5", answer_only=True).correct  # still serving


def _worker_pids(server_pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.strip().splitlines()[1:]]
    children = {int(p) for p, pp, _ in rows if int(pp) == server_pid}
    # workers are forked from the forkserver (a child of the server)
    return [int(p) for p, pp, _ in rows if int(pp) in children and int(p) not in children]


def test_crashed_worker_is_replaced(stub, verifier_server):
    before = _worker_pids(verifier_server.process.pid)
    assert len(before) == 2, before
    for pid in before:
        subprocess.run(["kill", "-9", str(pid)], check=True)
    verdicts = [verify(stub, MATH, r"\frac{1}{2}", r"\dfrac{2}{4}", answer_only=True) for _ in range(4)]
    # A request that was sent to a dead worker gets a clear verdict; later ones succeed on replacements.
    assert verdicts[-1].correct
    assert all(v.correct or "crashed" in v.detail for v in verdicts)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(_worker_pids(verifier_server.process.pid)) < 2:
        time.sleep(0.1)
    after = _worker_pids(verifier_server.process.pid)
    assert len(after) == 2 and not set(after) & set(before)


# --- graceful shutdown ------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_calls_and_exits_cleanly(tmp_path):
    port = free_port()
    server = start_server(
        ["serve", "verifier", "--port", str(port), "--workers", "1", "--item-timeout", "2"], port, tmp_path / "log"
    )
    with grpc.insecure_channel(server.address) as channel:
        stub = verifier_pb2_grpc.VerifierStub(channel)
        future = stub.Verify.future(
            vpb.VerifyRequest(kind=MATH, gold_answer="5", candidate=PATHOLOGICAL["power tower"], candidate_is_answer=True),
            timeout=30,
        )
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        verdict = future.result().verdict  # the in-flight call still completes
        assert verdict.reason == pb.VERDICT_REASON_TIMEOUT
    assert server.process.wait(timeout=20) == 0, server.log()
    assert "stopped" in server.log()


@pytest.mark.parametrize("method", ["/lema.v1.Verifier/Verify", "/lema.v1.Verifier/VerifyBatch"])
def test_a_corrupt_request_is_invalid_argument_not_unknown(verifier_channel, method):
    """Bytes that are not a protobuf message: the one error interceptor answers INVALID_ARGUMENT naming the method."""
    call = verifier_channel.unary_unary(method) if method.endswith("/Verify") else verifier_channel.unary_stream(method)
    with pytest.raises(grpc.RpcError) as error:
        reply = call(b"\xff\xff\xff\xff\x0f", timeout=10)
        list(reply) if not method.endswith("/Verify") else None
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    assert method in error.value.details()
