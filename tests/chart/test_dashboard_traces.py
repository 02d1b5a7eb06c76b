"""The SLO dashboard leads from a slow turn to its trace: its Tempo queries must ask for the
spans and attributes the agent really sends (agent/src/traces.rs), or the link finds nothing."""

import json
import re
import urllib.parse

import chartlib

DASHBOARD = chartlib.REPO / "config" / "grafana" / "grokcast-slo.json"
TRACES = chartlib.REPO / "agent" / "src" / "traces.rs"


def traceql(dashboard):
    """Every TraceQL query of the dashboard: its panels' and its data links'."""
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            if target.get("queryType") == "traceql":
                assert target["datasource"]["uid"] == "${tempo}", panel["title"]
                queries.append(target["query"])
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", []):
            if "/explore" in link["url"]:
                panes = json.loads(urllib.parse.parse_qs(link["url"].split("?", 1)[1])["panes"][0])
                for pane in panes.values():
                    assert pane["datasource"] == "${tempo}", link["title"]
                    queries += [q["query"] for q in pane["queries"]]
    return queries


def test_slow_turn_queries_ask_for_what_the_agent_sends():
    dashboard = json.loads(DASHBOARD.read_text())
    source = TRACES.read_text()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["tempo"]["type"] == "datasource" and variables["tempo"]["query"] == "tempo"
    # The threshold is the agent's own SLO, exported by the agent.
    assert "grokcast_turn_latency_slo_seconds" in variables["slo_ms"]["query"]["query"]

    queries = traceql(dashboard)
    assert len(queries) >= 2, "a panel and a data link"
    for query in queries:
        assert 'name = "turn"' in query and '.span("turn")' not in source
        assert 'span_builder("turn")' in source
        assert "span.grokcast.turn.latency_ms > $slo_ms" in query
        for attribute in re.findall(r"\b(?:span|resource)\.([a-z_.0-9]+)", query):
            if attribute == "service.name":
                assert "SERVICE: &str = \"grokcast-agent\"" in source
            else:
                assert f'"{attribute}"' in source, f"the agent sends no {attribute}"
