"""The correction API's limits and checks (services/endpoint/corrections.py), without a server."""

from __future__ import annotations

import pytest

from lema.services.endpoint.corrections import ApiError, _Bucket, _check_gold


def test_a_bucket_lets_a_minute_s_requests_through_then_refills_evenly():
    bucket = _Bucket(capacity=6, tokens=6, at=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [None] * 6
    wait = bucket.take(0.0)
    assert wait == pytest.approx(10.0)  # 6 per minute: one every 10 s
    assert bucket.take(5.0) == pytest.approx(5.0)
    assert bucket.take(10.0) is None
    assert bucket.take(10.0) == pytest.approx(10.0)
    bucket.take(1000.0)
    assert bucket.tokens == pytest.approx(5.0)  # refills to the capacity, no further


@pytest.mark.parametrize("kind,gold,ok", [
    ("gsm8k", "72", True), ("gsm8k", "1,000", True), ("gsm8k", "Janet sells #### 18", True),
    ("gsm8k", "seven", False), ("synthetic", "12", True), ("synthetic", "x + 1", False),
    ("math", "\\frac{1}{2}", True), ("math", "\\frac{1}{2", False), ("math", "}{", False), ("gsm8k", " ", False),
])
def test_a_gold_answer_must_read_for_its_kind(kind, gold, ok):
    if ok:
        _check_gold(kind, gold, "")
    else:
        with pytest.raises(ApiError) as refused:
            _check_gold(kind, gold, "items[3].")
        assert refused.value.status == 400 and str(refused.value).startswith("items[3].gold_answer")


def test_a_broken_keys_file_is_a_503_naming_it_not_a_crash(tmp_path):
    from types import SimpleNamespace

    from lema.core.api_keys import KeyRing
    from lema.core.config import EndpointConfig
    from lema.services.endpoint.corrections import Gatekeeper

    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": [{"name": "x", "sha256": "secret-looking-text"')
    gate = Gatekeeper(EndpointConfig(), KeyRing(keys))
    request = SimpleNamespace(headers={"authorization": "Bearer lema_anything"}, client=None)
    with pytest.raises(ApiError) as refused:
        gate.admit(request, "corrections")
    assert refused.value.status == 503 and "keys.json" in str(refused.value)
    assert "secret-looking-text" not in str(refused.value)
