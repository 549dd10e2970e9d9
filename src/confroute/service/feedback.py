"""POST /v1/feedback: a label for the answer served, or a gold answer that grades every stage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from confroute.grading import Grader
from confroute.service.decision_log import DecisionLog, FeedbackRecord
from confroute.service.decision_store import shadow_id
from confroute.service.errors import NotFound, NotReady
from confroute.service.schemas import Feedback


class _Staged(Protocol):
    @property
    def decision(self) -> str: ...


S = TypeVar("S", bound=_Staged)


def served_stage(stages: Sequence[S]) -> S:
    """The stage whose answer was served: the last accepted one, else the last answered one
    (an explored answer is never served). Feedback and `confroute report traffic` both read it."""
    accepted = [s for s in stages if s.decision == "accept"]
    answered = [s for s in stages if s.decision not in ("error", "explore")]
    return (accepted or answered or list(stages))[-1]


async def apply_feedback(log: DecisionLog, grader: Grader, fb: Feedback) -> dict[str, Any]:
    """Queue the labels of a logged request; 404 if the request id was never logged."""
    try:
        stages = await asyncio.to_thread(log.stages, fb.request_id)
    except Exception as exc:  # the store is down and the request is not among the recent ones
        raise NotReady(f"the decision log cannot be read now ({exc}); retry later") from None
    if not stages:
        raise NotFound(f"unknown request_id {fb.request_id!r}: no decision was logged for it")
    now = time.time()
    if fb.gold is not None:
        records = [FeedbackRecord(fb.request_id, s.stage, grader.is_correct(s.prediction, fb.gold),
                                  now, fb.gold) for s in stages if s.decision != "error"]
        # shadow mode: the router's would-be stages of this request are graded as well
        sid = shadow_id(fb.request_id)
        with contextlib.suppress(Exception):  # the served stages' labels do not wait on these
            records += [FeedbackRecord(sid, s.stage, grader.is_correct(s.prediction, fb.gold),
                                       now, fb.gold)
                        for s in await asyncio.to_thread(log.stages, sid)
                        if s.decision != "error"]
    else:
        assert fb.correct is not None
        records = [FeedbackRecord(fb.request_id, served_stage(stages).stage, fb.correct, now)]
    for r in records:
        log.submit(r)
    models = {s.stage: s.model for s in stages}
    labels = [{"stage": r.stage, "model": models[r.stage], "correct": r.correct}
              for r in records if r.request_id == fb.request_id]
    shadow = [{"stage": r.stage, "correct": r.correct} for r in records
              if r.request_id != fb.request_id]
    return {"request_id": fb.request_id, "labels": labels, **({"shadow": shadow} if shadow else {})}
