"""Issue 28's repros of inputs that were unbounded or crashed: each is now a clear 4xx / INVALID_ARGUMENT with a short
message (the gRPC and HTTP transports map these error classes; tests/unit/core/test_errors.py covers the mapping)."""

from __future__ import annotations

import pytest

from lema.core.adapter_registry import AdapterRegistry, AdapterRejected
from lema.core.store import repository as repo
from lema.core.synthetic.program import Program


@pytest.mark.parametrize("depth", [1_000, 5_000])
def test_a_deeply_nested_program_is_one_rejected_item_not_a_crash(depth):
    nested = "[" * depth + "]" * depth
    with pytest.raises(ValueError):
        Program.from_json(nested)
    problem, reason = repo.validate_problem({"kind": "synthetic", "question": "q", "gold_answer": "1",
                                             "program_json": nested})
    assert problem is None and reason.startswith("program_json")


def test_an_adapter_path_past_the_file_systems_limits_is_a_400_with_a_short_message(tmp_path):
    registry = AdapterRegistry(tmp_path)
    for path in ("a" * 300, "x/" * 3000, "ok/" + "é" * 200):
        with pytest.raises(AdapterRejected) as err:
            registry.resolve(path)
        assert err.value.status == 400 and len(str(err.value)) < 300, str(err.value)[:100]


def test_a_10_kb_adapter_id_is_not_found_not_an_os_error(tmp_path):
    from lema.trainer.registry import AdapterRegistry as TrainerRegistry

    with pytest.raises(KeyError):
        TrainerRegistry(tmp_path).get("a" * 10_000)


def test_adapter_metadata_is_bounded_and_admin_errors_use_the_documented_body():
    from fastapi.testclient import TestClient

    from lema.services.endpoint.admin import MAX_METADATA_CHARS, LoadRequest, build_admin_app

    with pytest.raises(ValueError, match="at most 64 KB"):
        LoadRequest.model_validate({"path": "a1", "metadata": {"notes": "x" * (8 << 20)}})
    assert LoadRequest.model_validate({"path": "a1", "metadata": {"notes": "x" * (MAX_METADATA_CHARS // 2)}})
    client = TestClient(build_admin_app(lambda: None, "LEMA_TEST_NO_SUCH_TOKEN_VARIABLE"))
    for method, path in (("GET", "/no-such-route"), ("DELETE", "/status")):
        reply = client.request(method, path)
        assert reply.status_code in (404, 405) and set(reply.json()) == {"error"}, reply.text
    reply = client.post("/adapters", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code in (400, 401) and set(reply.json()) == {"error"}, reply.text


def test_the_demo_plot_shows_every_model_with_its_interval(tmp_path):
    """Issue 29: one round drew lines over a single x value (CoT-only hidden under LEMA) and no intervals; now a bar
    per model with its 95% interval, and per round a point with its interval for each arm and what serves."""
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer
    from matplotlib.image import imread

    from lema.app.demo import DemoResult, Row, demo_figure, plot_results
    from lema.trainer.stats import wilson

    result = DemoResult()
    result.rows += [Row(0, "base", "-", 0, 40, 100, "in-process, test"),
                    Row(1, "CoT-only", "cot", 10, 55, 100, "test", [0.54, 0.56]),
                    Row(1, "LEMA", "lema", 12, 55, 100, "test", [0.55, 0.55]),
                    Row(1, "served: a1", "-", 0, 50, 90, "endpoint, validation")]
    pixels = imread(plot_results(result, tmp_path / "results.png"))[..., :3]
    coloured = ((pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.2).mean()  # the coloured bars' share of the image
    assert coloured > 0.05, coloured  # lines over one x value coloured well under 1%

    def intervals(figure) -> list[tuple[float, float]]:
        (axis,) = figure.axes
        spans = []
        for container in axis.containers:
            if isinstance(container, ErrorbarContainer):
                for segments in container.lines[2]:
                    spans += [(min(s[0][1], s[1][1]), max(s[0][1], s[1][1])) for s in segments.get_segments()]
        plt.close(figure)
        return spans

    expected = [tuple(100 * b for b in wilson(c, n)) for c, n in ((40, 100), (55, 100), (55, 100), (50, 90))]
    assert intervals(demo_figure(result, plt)) == pytest.approx(expected)

    result.rows += [Row(2, "CoT-only", "cot", 20, 60, 100, "test"), Row(2, "LEMA", "lema", 24, 52, 100, "test"),
                    Row(2, "served: a2", "-", 0, 60, 90, "endpoint, validation")]
    spans = intervals(demo_figure(result, plt))
    assert len(spans) == 6 and tuple(100 * b for b in wilson(52, 100)) == pytest.approx(spans[3])
