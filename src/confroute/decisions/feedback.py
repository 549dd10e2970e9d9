"""Feedback: a label for the answer served, or a gold answer that grades every stage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from confroute.decisions.log import DecisionLog
from confroute.decisions.records import FeedbackRecord, served_stage, shadow_id
from confroute.errors import NotFound, NotReady
from confroute.grading import Grader


async def apply_feedback(log: DecisionLog, grader: Grader, request_id: str,
                         correct: bool | None = None, gold: str | None = None) -> dict[str, Any]:
    """Queue the labels of a logged request (exactly one of `correct`, for the answer served,
    and `gold`, which grades every stage); NotFound if the request id was never logged."""
    try:
        stages = await asyncio.to_thread(log.stages, request_id)
    except Exception as exc:  # the store is down and the request is not among the recent ones
        raise NotReady(f"the decision log cannot be read now ({exc}); retry later") from None
    if not stages:
        raise NotFound(f"unknown request_id {request_id!r}: no decision was logged for it")
    now = time.time()
    if gold is not None:
        records = [FeedbackRecord(request_id, s.stage, grader.is_correct(s.prediction, gold),
                                  now, gold) for s in stages if s.decision != "error"]
        # shadow mode: the router's would-be stages of this request are graded as well
        sid = shadow_id(request_id)
        with contextlib.suppress(Exception):  # the served stages' labels do not wait on these
            records += [FeedbackRecord(sid, s.stage, grader.is_correct(s.prediction, gold),
                                       now, gold)
                        for s in await asyncio.to_thread(log.stages, sid)
                        if s.decision != "error"]
    else:
        assert correct is not None
        records = [FeedbackRecord(request_id, served_stage(stages).stage, correct, now)]
    seq = 0
    for r in records:
        seq = log.submit(r)
    await log.settled(seq)  # durable mode: the label is on disk before it is acknowledged
    models = {s.stage: s.model for s in stages}
    labels = [{"stage": r.stage, "model": models[r.stage], "correct": r.correct}
              for r in records if r.request_id == request_id]
    shadow = [{"stage": r.stage, "correct": r.correct} for r in records
              if r.request_id != request_id]
    return {"request_id": request_id, "labels": labels, **({"shadow": shadow} if shadow else {})}
