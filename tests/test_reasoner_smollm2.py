"""The reasoner with a real pretrained model: SmolLM2-135M-Instruct (its own chat template, real text)."""

from __future__ import annotations

import grpc
from conftest import free_port, start_server

from lema.v1 import common_pb2 as pb
from lema.v1 import reasoner_pb2 as rpb
from lema.v1 import reasoner_pb2_grpc


def test_reasoner_serves_smollm2(smollm2_dir, tmp_path):
    port = free_port()
    server = start_server(["serve", "reasoner", "--model", str(smollm2_dir), "--engine", "transformers",
                           "--port", str(port)], port, tmp_path / "reasoner.log", timeout=300)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = reasoner_pb2_grpc.ReasonerStub(channel)
            problems = [
                pb.Problem(id="add", kind=pb.DATASET_KIND_GSM8K, question="Tom has 2 apples and buys 3 more. "
                           "How many apples does he have?", gold_answer="5"),
                pb.Problem(id="mul", kind=pb.DATASET_KIND_GSM8K, question="A box holds 4 pens. How many pens are "
                           "in 3 boxes?", gold_answer="12"),
            ]
            request = rpb.SolveRequest(problems=problems, verify=True,
                                       sampling=pb.SamplingParams(n=2, temperature=0.7, max_tokens=96, seed=1))
            responses = list(stub.Solve(request, timeout=300))
    finally:
        assert server.stop() == 0
    assert len(responses) == 4
    for r in responses:
        text = r.path.text
        assert len(text.split()) >= 5 and "\ufffd" not in text  # real words, cleanly decoded
        assert "<|im_start|>" not in text and "<|im_end|>" not in text  # the chat template framed the turn
        assert r.path.usage.prompt_tokens > 20  # the template and the instruction were applied
        assert r.path.verdict.reason != pb.VERDICT_REASON_UNSPECIFIED
