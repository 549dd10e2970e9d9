"""The cascade policy in the service: the first model from the question, escalate and skip
ahead in the chat endpoint, and /v1/route judging any model's answer in its state."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from confroute.service import create_app

from .conftest import PANEL, serve_app, settings_for, stub_panel
from .stub_backend import TEXT, StubBackend, tokens

SMALL, MEDIUM, LARGE = PANEL


@pytest.fixture()
def client(tmp_path: Path, cascade_models: Path, stub: str) -> Iterator[Any]:
    made: list[TestClient] = []

    def make(modes: tuple[str, str, str]) -> TestClient:
        panel = stub_panel(tmp_path / f"panel{len(made)}.yaml", stub, modes)
        c = TestClient(create_app(settings_for(tmp_path, cascade_models, panel)))
        made.append(c.__enter__())
        return c

    yield make
    for c in made:
        c.__exit__(None, None, None)


def chat(c: TestClient, question: str, lam: float) -> Any:
    r = c.post("/v1/chat/completions", json={
        "model": f"confroute:{lam}", "messages": [{"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.json()["router"]


def test_escalates_then_skips_ahead_by_lambda(client: Any) -> None:
    c = client(("unsure", "ok:7", "ok:9"))
    r = chat(c, "What is 3 + 4?", 0.5)
    assert [(t["model"], t["decision"]) for t in r["tried"]] == [(SMALL, "escalate"),
                                                                 (MEDIUM, "accept")]
    assert r["start"]["model"] == SMALL and r["start"]["reason"] == "query_features"
    assert r["tried"][0]["next_model"] == MEDIUM and "accept" in r["tried"][0]["values"]
    r = chat(c, "What is 3 + 4?", 0.8)
    assert [(t["model"], t["decision"]) for t in r["tried"]] == [(SMALL, "skip_ahead"),
                                                                 (LARGE, "accept")]
    assert r["cost"] == 4.0  # the medium model was never called (per_call 1 + 3)


def test_a_question_that_looks_hard_goes_straight_to_the_big_model(client: Any) -> None:
    c = client(("ok:1", "ok:2", "ok:6"))
    r = chat(c, "Solve: What is 1 + 2 + 3?", 0.5)  # 3 numbers; the template is stripped
    assert r["start"]["model"] == LARGE
    assert [(t["model"], t["decision"], t["reason"]) for t in r["tried"]] == [
        (LARGE, "accept", "last_model")]
    assert r["cost"] == 3.0


def test_route_decides_for_any_model_in_its_state(client: Any) -> None:
    c = client(("ok", "ok", "ok"))
    unsure = tokens("We add . The answer is : 7", -2.5)
    r = c.post("/v1/route", json={"model": SMALL, "content": unsure, "cost_quality_tradeoff": 0.8})
    body = r.json()
    assert (body["decision"], body["next_model"]) == ("skip_ahead", LARGE), r.text
    assert set(body["values"]) == {MEDIUM, LARGE, "accept"}
    r = c.post("/v1/route", json={"model": MEDIUM, "content": unsure, "previous": ["7"],
                                  "previous_models": [SMALL], "cost_quality_tradeoff": 0.5})
    assert r.json()["decision"] == "escalate" and r.json()["next_model"] == LARGE, r.text
    r = c.post("/v1/route", json={"model": LARGE, "content": unsure})
    assert (r.json()["decision"], r.json()["reason"]) == ("accept", "last_model")
    for bad, words in (({"previous_models": [SMALL]}, "one model per answer"),
                       ({"previous": ["7"], "previous_models": [LARGE]}, "in panel order"),
                       ({"previous": ["7"], "previous_models": ["gpt-9"]}, "unknown model")):
        r = c.post("/v1/route", json={"model": MEDIUM, "content": unsure, **bad})
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text


def test_limits_max_models_max_cost_and_target_accuracy(client: Any) -> None:
    """Per-request limits through the real openai client (extra_body), and their 400s."""
    from openai import APIStatusError, OpenAI

    c = client(("unsure", "unsure", "ok:9"))
    with serve_app(c.app) as url:
        oa = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        ask = [{"role": "user", "content": "What is 3 + 4?"}]

        def router(**extra: Any) -> Any:
            r = oa.chat.completions.create(model="confroute:0.5", messages=ask,
                                           extra_body=extra)
            return r.model_extra["router"]

        r = router()
        assert [t["model"] for t in r["tried"]] == [SMALL, MEDIUM, LARGE]
        assert [t["cost"] for t in r["tried"]] == [1.0, 2.0, 3.0] and r["cost"] == 6.0
        r = router(max_models=2)
        assert [t["model"] for t in r["tried"]] == [SMALL, MEDIUM]
        assert r["stopped"] == "max_models" and r["model"] == MEDIUM
        r = router(max_cost=3.5)  # 1 + 2 spent; the large model's 3 would pass 3.5
        assert r["stopped"] == "max_cost" and r["cost"] == 3.0
        r = router(target_accuracy=0.8)  # the cheaper row reaches it
        assert r["target_accuracy"]["lambda"] == 0.8 and r["cost_quality_tradeoff"] == 0.8
        assert r["target_accuracy"]["estimated_accuracy"] == 0.8
        r = router(target_accuracy=0.85)  # only the dearer one does
        assert r["target_accuracy"]["lambda"] == 0.5 and r["cost_quality_tradeoff"] == 0.5
        assert r["target_accuracy"]["estimated_accuracy"] == 0.9
        for extra, words in (({"max_cost": 0.5}, "max_cost 0.5 is below the price"),
                             ({"target_accuracy": 0.95}, "no setting reaches accuracy 0.950"),
                             ({"target_accuracy": 1.5}, "target_accuracy"),
                             ({"max_cost": -1}, "max_cost"), ({"max_models": 0}, "max_models")):
            with pytest.raises(APIStatusError) as err:
                router(**extra)
            assert err.value.status_code in (400, 422) and words in str(err.value), extra


def test_route_target_accuracy_and_max_models(client: Any) -> None:
    c = client(("ok", "ok", "ok"))
    unsure = tokens("We add . The answer is : 7", -2.5)
    r = c.post("/v1/route", json={"model": SMALL, "content": unsure, "target_accuracy": 0.8})
    assert r.json()["cost_quality_tradeoff"] == 0.8 and r.json()["decision"] == "skip_ahead"
    r = c.post("/v1/route", json={"model": SMALL, "content": unsure, "max_models": 1})
    assert (r.json()["decision"], r.json()["reason"]) == ("accept", "max_models"), r.text
    r = c.post("/v1/route", json={"model": SMALL, "content": unsure, "target_accuracy": 0.99})
    assert r.status_code == 400 and "no setting reaches" in r.json()["error"]["message"]
    # max_cost: the large model costs 3 a call (per_call), the small one's answer 1
    at = {"model": SMALL, "content": unsure, "cost_quality_tradeoff": 0.8,
          "usage": {"prompt_tokens": 10, "completion_tokens": 7}}
    assert c.post("/v1/route", json={**at, "max_cost": 4.0}).json()["decision"] == "skip_ahead"
    r = c.post("/v1/route", json={**at, "max_cost": 3.5}).json()  # 1 spent + 3 > 3.5
    assert (r["decision"], r["reason"]) == ("accept", "max_cost"), r
    r = c.post("/v1/route", json={**at, "max_cost": 10.0, "cost_so_far": 8.0}).json()
    assert r["reason"] == "max_cost"
    r = c.post("/v1/route", json={**at, "max_cost": -1})
    assert r.status_code == 400 and "$.max_cost" in r.json()["error"]["message"]


def test_a_looper_config_runs_as_is(tmp_path: Path, cascade_models: Path, stub: str) -> None:
    """serve with the looper's block: its formula decides, its budget caps, its on_error holds."""
    config = tmp_path / "router.yaml"
    config.write_text("algorithm:\n  type: confidence\n  confidence:\n"
                      "    confidence_method: hybrid\n    threshold: 0.6\n"
                      "    escalation_order: small_to_large\n    on_error: fail\n"
                      "  budget: {max_models: 2}\n")
    panel = stub_panel(tmp_path / "panel.yaml", stub, ("unsure", "ok:7", "error"))
    settings = settings_for(tmp_path, cascade_models, panel, router_config=config)
    with TestClient(create_app(settings)) as c:
        r = chat(c, "What is 3 + 4?", 0.5)
        assert [(t["model"], t["decision"]) for t in r["tried"]] == [(SMALL, "escalate"),
                                                                     (MEDIUM, "accept")]
        assert r["tried"][0]["threshold"] == 0.6 and r["start"]["reason"] == "escalation_order"
    panel = stub_panel(tmp_path / "panel2.yaml", stub, ("unsure", "unsure", "error"))
    with TestClient(create_app(settings_for(tmp_path, cascade_models, panel,
                                            router_config=config))) as c:
        r = chat(c, "What is 3 + 4?", 0.5)
        assert r["stopped"] == "max_models" and len(r["tried"]) == 2  # the budget's cap
    config.write_text(config.read_text().replace("  budget: {max_models: 2}\n", ""))
    with TestClient(create_app(settings_for(tmp_path, cascade_models, panel,
                                            router_config=config))) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "confroute", "messages": [{"role": "user", "content": "What is 3 + 4?"}]})
        assert r.status_code == 502 and LARGE in r.json()["error"]["message"]  # on_error: fail


def test_the_engine_refuses_a_version_trained_with_another_grader(cascade_models: Path) -> None:
    from confroute.engine import Engine
    from confroute.manifest import ManifestError

    engine = Engine(cascade_models, None, "exact", 0.3)
    with pytest.raises(ManifestError, match="CONFROUTE_GRADER=exact conflicts with version"):
        engine.versions.reload()
    assert engine.versions.current is None and "conflicts" in (engine.versions.last_error or "")
    ok = Engine(cascade_models, None, None, 0.3)
    assert ok.versions.reload().version and type(ok.grader).__name__ == "NumericGrader"
    same = Engine(cascade_models, None, "numeric", 0.3)  # the version's own grader, named
    assert same.versions.reload().version == ok.versions.current.version  # type: ignore[union-attr]


def test_shadow_mode_serves_the_fixed_model_and_logs_what_the_router_would_do(
    tmp_path: Path, cascade_models: Path
) -> None:
    """Shadow mode through the real openai client: the reply is the large model's; the router's
    would-be cascade is logged (endpoint "shadow") and counted, reusing the served answer when
    it reaches the large model instead of calling it again."""
    import httpx
    from openai import OpenAI
    from support import wait_for

    backend = StubBackend()
    with serve_app(backend, ready_path="/v1/models") as stub_url:
        for modes, lam, would in ((("unsure", "ok:7", "ok:9"), 0.5, [SMALL, MEDIUM]),
                                  (("unsure", "unsure", "ok:9"), 0.5, [SMALL, MEDIUM, LARGE])):
            run = tmp_path / f"run{len(would)}"
            run.mkdir()
            panel = stub_panel(run / "panel.yaml", stub_url + "/v1", modes)
            settings = settings_for(run, cascade_models, panel, mode="shadow")
            backend.calls.clear()
            with serve_app(create_app(settings)) as url:
                oa = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
                reply = oa.chat.completions.create(
                    model=f"confroute:{lam}",
                    messages=[{"role": "user", "content": "What is 3 + 4?"}])
                router = reply.model_extra["router"]
                assert router["mode"] == "shadow" and router["model"] == LARGE
                assert reply.choices[0].message.content.endswith("The answer is : 9")

                db = run / "decisions.db"
                n = len(would)
                wait_for(lambda db=db, n=n: len(_shadow_rows(db)) == n)
                assert [m for _, m, _ in _shadow_rows(db)] == would
                metrics = httpx_get(url + "/metrics")
                assert f'confroute_shadow_requests_total{{would_answer="{would[-1]}"}} 1.0' \
                    in metrics
                assert 'confroute_shadow_cost_total{kind="served"} 3.0' in metrics
                spent = {2: 3.0, 3: 6.0}[len(would)]  # per_call 1 + 2 (+ 3: the reused answer)
                assert f'confroute_shadow_cost_total{{kind="would_be"}} {spent}' in metrics
                fb = httpx.post(url + "/v1/feedback", json={"request_id": router["request_id"],
                                                             "gold": "9"}, timeout=10).json()
                assert [x["correct"] for x in fb["labels"]] == [True]  # the served large model
                # the would-be stages are graded too: only the large model's 9 is right
                assert [x["correct"] for x in fb["shadow"]] == [m == LARGE for m in would]
            assert backend.calls[f"{modes[2]}"] == 1  # the large model was called once


def _token_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT request_id, prompt_tokens, completion_tokens FROM decisions "
                            "WHERE endpoint = 'chat'").fetchall()


def _shadow_rows(db: Path) -> list[tuple[Any, ...]]:
    """The would-be stages (logged under '<request id>:shadow')."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT stage, model, decision FROM decisions WHERE "
                            "endpoint = 'shadow' ORDER BY stage").fetchall()


def httpx_get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=10).text


def test_report_traffic_on_a_log_the_service_wrote(tmp_path: Path, cascade_models: Path,
                                                   stub: str) -> None:
    """`confroute report traffic` on the decision log of a running service: enforce requests
    (one escalated, one skipped ahead, one with gold feedback), then shadow-mode requests."""
    import json

    from support import wait_for
    from typer.testing import CliRunner

    from confroute.cli import app as cli

    panel = stub_panel(tmp_path / "panel.yaml", stub, ("unsure", "ok:7", "ok:9"))
    settings = settings_for(tmp_path, cascade_models, panel)
    with TestClient(create_app(settings)) as c:
        first = chat(c, "What is 3 + 4?", 0.5)  # small escalates, medium (7) accepted: cost 3
        chat(c, "What is 3 + 4?", 0.8)  # small skips ahead to large (9): cost 1 + 3
        r = c.post("/v1/feedback", json={"request_id": first["request_id"], "gold": "7"})
        assert r.status_code == 200, r.text
    with TestClient(create_app(settings_for(tmp_path, cascade_models, panel,
                                            mode="shadow"))) as c:
        chat(c, "What is 3 + 4?", 0.5)  # served: large (3); would be small + medium (3)
        db = tmp_path / "decisions.db"
        wait_for(lambda: len(_shadow_rows(db)) == 2)
    out = tmp_path / "traffic"
    result = CliRunner().invoke(cli, ["report", "traffic", "--log", str(tmp_path / "decisions.db"),
                                      "--panel", str(panel), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "traffic.json").read_text())
    assert rep["requests"] == 3 and (out / "p_correct.png").is_file()
    assert rep["answered"] == {SMALL: 0.0, MEDIUM: 1 / 3, LARGE: 2 / 3}
    assert rep["escalation_rate"] == pytest.approx(1 / 3)
    assert rep["skip_ahead_rate"] == pytest.approx(1 / 3)
    assert rep["cost"] == pytest.approx(3 + 4 + 3)
    assert rep["always_last_cost"] == pytest.approx(9.0)  # the large model costs 3 a call
    assert rep["labeled_requests"] == 1 and rep["accuracy"] == 1.0
    sh = rep["shadow"]
    assert sh["requests"] == 1 and sh["would_answer"][MEDIUM] == 1.0
    assert sh["served_cost"] == 3.0 and sh["would_be_cost"] == 3.0
    bad = CliRunner().invoke(cli, ["report", "traffic", "--log", str(tmp_path / "none.db")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    # every logged call carries the tokens its server reported (the stub: 10 prompt tokens)
    with sqlite3.connect(db) as conn:
        tokens = conn.execute("SELECT prompt_tokens, completion_tokens FROM decisions").fetchall()
    assert len(tokens) == 7 and all(pt == 10 and ct and ct > 0 for pt, ct in tokens)
    # priced per token, the report counts both: per call + 10 prompt tokens + the completion's
    priced = stub_panel(tmp_path / "priced.yaml", stub, ("unsure", "ok:7", "ok:9"), **{
        m: {"cost": {"per_call": 0.0, "per_1k_prompt_tokens": 100.0,
                     "per_1k_completion_tokens": 1.0}} for m in (SMALL, MEDIUM, LARGE)})
    result = CliRunner().invoke(cli, ["report", "traffic", "--log", str(db), "--panel",
                                      str(priced), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "traffic.json").read_text())
    enforce = [(pt, ct) for rid, pt, ct in _token_rows(db) if not rid.endswith(":shadow")]
    assert rep["cost"] == pytest.approx(sum(pt * 0.1 + ct * 0.001 for pt, ct in enforce))
    assert rep["calls_without_tokens"] == 0 and "carry no tokens" not in rep["cost_basis"]


def test_a_server_without_usage_logs_its_tokens_as_unknown(tmp_path: Path, cascade_models: Path,
                                                           stub: str) -> None:
    """A reply without `usage`: the reply's usage is the estimate (no prompt tokens, one
    completion token per logprob), the log says unknown and the report counts the call."""
    import json

    from support import wait_for
    from typer.testing import CliRunner

    from confroute.cli import app as cli

    panel = stub_panel(tmp_path / "panel.yaml", stub, ("nousage:7", "ok:7", "ok:9"))
    with TestClient(create_app(settings_for(tmp_path, cascade_models, panel))) as c:
        r = c.post("/v1/chat/completions", json={
            "model": "confroute:0.2", "messages": [{"role": "user", "content": "What is 3 + 4?"}]})
        assert r.status_code == 200, r.text
        assert [t["model"] for t in r.json()["router"]["tried"]] == [SMALL]  # sure: accepted
        words = len(TEXT.format(answer="7").split(" "))  # the stub's word tokens
        assert r.json()["usage"] == {"prompt_tokens": 0, "completion_tokens": words,
                                     "total_tokens": words}
        db = tmp_path / "decisions.db"
        wait_for(lambda: len(_token_rows(db)) == 1)
    assert [row[1:] for row in _token_rows(db)] == [(None, None)]
    out = tmp_path / "traffic"
    result = CliRunner().invoke(cli, ["report", "traffic", "--log", str(db), "--panel",
                                      str(panel), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rep = json.loads((out / "traffic.json").read_text())
    assert rep["calls_without_tokens"] == 1 and "1 of 1 logged calls" in rep["cost_basis"]


def test_gold_sent_before_the_shadow_cascade_ends_still_grades_its_stages(
    tmp_path: Path, cascade_models: Path
) -> None:
    """The would-be cascade's first model answers 3 s after the reply; gold feedback posted at
    once finds no shadow stage to label. `report traffic` (with its grader) grades the stage
    logged later from the request's gold, and says how many would-be stages are labeled."""
    import httpx
    from support import wait_for

    from confroute.grading import get_grader
    from confroute.panel import load_panel
    from training.inrows import read_log
    from training.traffic import traffic_report

    backend = StubBackend()
    with serve_app(backend, ready_path="/v1/models") as stub_url:
        panel = stub_panel(tmp_path / "panel.yaml", stub_url + "/v1", ("slow:8", "ok:9", "ok:9"))
        settings = settings_for(tmp_path, cascade_models, panel, mode="shadow")
        with serve_app(create_app(settings)) as url:
            r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
                "model": "confroute:0.5", "messages": [{"role": "user",
                                                        "content": "What is 3 + 4?"}]})
            rid = r.json()["router"]["request_id"]
            fb = httpx.post(url + "/v1/feedback", json={"request_id": rid, "gold": "9"},
                            timeout=10).json()
            assert "shadow" not in fb  # the would-be stage is not logged yet
            db = tmp_path / "decisions.db"
            wait_for(lambda: len(_shadow_rows(db)) == 1, timeout=15)
    decisions = read_log(str(tmp_path / "decisions.db"))
    cfg = load_panel(panel)
    blind = traffic_report(decisions, cfg)["shadow"]
    assert (blind["labeled_stages"], blind["stages"], blind["would_be_accuracy"]) == (0, 1, None)
    graded = traffic_report(decisions, cfg, get_grader("numeric"))["shadow"]
    assert (graded["labeled_stages"], graded["stages"]) == (1, 1)
    assert graded["would_be_accuracy"] == 0.0  # the small model's 8 against the gold 9


def test_route_exploration_logs_propensities_that_report_counterfactual_reads(
    tmp_path: Path, cascade_models: Path, stub: str
) -> None:
    """With CONFROUTE_EXPLORE_ROUTE_RATE 1 every choice is drawn uniformly: the first model's
    propensity is 1/3, a later call's 1/(accepting + the models after the one that answered);
    the log then supports `confroute report counterfactual` for another λ."""
    from typer.testing import CliRunner

    from confroute.cli import app

    panel = stub_panel(tmp_path / "panel.yaml", stub, ("ok:7", "unsure:7", "ok:8"))
    settings = settings_for(tmp_path, cascade_models, panel, explore_route_rate=1.0)
    with TestClient(create_app(settings)) as c:
        for _ in range(40):
            r = chat(c, "What is 3 + 4?", 0.5)
            fb = c.post("/v1/feedback", json={"request_id": r["request_id"], "gold": "7"})
            assert fb.status_code == 200, fb.text
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        rows = db.execute("SELECT request_id, stage, model, reason, propensity, choice_eps "
                          "FROM decisions WHERE endpoint = 'chat' ORDER BY id").fetchall()
    assert rows and all(eps == 1.0 for *_, eps in rows)
    by: dict[str, list[tuple[Any, ...]]] = {}
    for row in rows:
        by.setdefault(row[0], []).append(row)
    for stages in by.values():
        assert stages[0][4] == pytest.approx(1 / 3)
        for before, after in itertools.pairwise(stages):
            later = PANEL[PANEL.index(before[2]) + 1:]
            assert after[4] == pytest.approx(1 / (1 + len(later)))
    assert any(r[3] == "explored" for r in rows)
    assert {s[0][2] for s in by.values()} == set(PANEL)  # every first model was tried
    out = CliRunner().invoke(app, ["report", "counterfactual", "--log",
                                   str(tmp_path / "decisions.db"), "--models-dir",
                                   str(cascade_models), "--lambda", "0.8", "--panel", str(panel),
                                   "--out", str(tmp_path / "cf")])
    assert out.exit_code == 0, out.output
    assert "snips" in out.output and "effective sample size" in out.output
    rep = json.loads((tmp_path / "cf" / "counterfactual.json").read_text())
    assert rep["episodes"] == 40 and rep["matched"] > 0 and rep["covered"], rep
    assert rep["left_out"] == {"no_propensity": 0, "unlabeled": 0}
    none = CliRunner().invoke(app, ["report", "counterfactual", "--log",
                                    str(tmp_path / "decisions.db"), "--models-dir",
                                    str(cascade_models), "--lambda", "2", "--panel", str(panel)])
    assert none.exit_code == 2 and "cost_quality_tradeoff" in none.output
