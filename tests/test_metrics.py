"""/metrics: label values from closed sets, and a bearer token when the deployment sets one."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import bearer


def _label_sets(text: str) -> set[tuple[tuple[str, str], ...]]:
    return {
        tuple(sorted(sample.labels.items()))
        for family in text_string_to_metric_families(text)
        if family.name.startswith("mobile_api_http_")
        for sample in family.samples
    }


def test_invented_methods_paths_and_statuses_do_not_grow_metrics(client):
    for index in range(5):
        client.open("/healthz", method=f"PROBE{index}")
        client.open(f"/no/such/path/{index}", method="GET")
    before = client.get("/metrics").get_data(as_text=True)
    for index in range(300):
        client.open("/healthz", method=f"INVENTED{index}")
        client.open(f"/v1/devices/{index}/nothing", method=f"X{index}")
        client.get(f"/nowhere/{index}")
    after = client.get("/metrics").get_data(as_text=True)
    assert _label_sets(after) == _label_sets(before)
    assert "INVENTED" not in after and "/nowhere" not in after
    labels = {dict(label_set).get("method") for label_set in _label_sets(after)}
    assert "other" in labels
    statuses = {dict(label_set).get("status") for label_set in _label_sets(after)}
    assert statuses - {None} <= {"1xx", "2xx", "3xx", "4xx", "5xx"}


def test_metrics_token_guards_metrics_when_set(app_factory):
    client = app_factory(METRICS_TOKEN="s3cret-metrics-token").test_client()
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic s3cret-metrics-token"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.get_json()["error"] == "unauthenticated"
        assert b"mobile_api_http" not in response.data
    response = client.get("/metrics", headers=bearer("s3cret-metrics-token"))
    assert response.status_code == 200
    assert b"mobile_api_http_requests_total" in response.data
    # Health probes stay open: the orchestrator holds no token.
    assert client.get("/healthz").status_code == 200


def test_metrics_stay_open_without_a_token(client):
    assert client.get("/metrics").status_code == 200
