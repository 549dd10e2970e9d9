"""Does a panel model's hidden state after reading the prompt predict who answers it right?

Issue 19's candidate question feature: the final-layer state of one model (the cheapest, whose
prefill the embedded backend pays anyway) after the chat-templated prompt, mean-pooled and at the
last token, against the two text features the cascade uses. Out-of-fold AUROC (5 item-grouped
folds), within-set AUROC, and leaving each set out; a logistic regression on PCA(32).

    python training/scripts/hidden_state_probe.py extract smollm2-135m   # var/hidden/<model>.npz
    python training/scripts/hidden_state_probe.py score smollm2-135m     # the table

Not part of the pipeline: the measurement behind docs/benchmarks.md (2026-12-02).
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

TRACES = Path("data/reference-traces")
OUT = Path("var/hidden")
JUDGED = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def extract(model: str) -> None:
    """Hidden states of every shipped question's prompt, as the embedded backend builds it."""
    import llama_cpp

    from confroute.backends.llamacpp import LlamaCppBackend
    from confroute.traces import read_columnar

    items = {t.item_id: t.messages for f in sorted(TRACES.glob("*.traces.npz"))
             for t in read_columnar(f) if t.model == model}
    b = LlamaCppBackend(model, str(LlamaCppBackend.model_file(model, {})), n_parallel=1,
                        n_threads=1)
    b._load()  # the backend's own tokenizer and chat template (prompt_tokens)
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = p.n_batch = p.n_ubatch = 1024
    p.n_seq_max, p.embeddings = 1, True
    p.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_NONE  # every token's state; pooled here
    p.n_threads = p.n_threads_batch = 1
    ctx = llama_cpp.llama_init_from_model(b._llm.model, p)
    n_embd = llama_cpp.llama_model_n_embd(b._llm.model)
    batch = llama_cpp.llama_batch_init(1024, 0, 1)
    mem = llama_cpp.llama_get_memory(ctx)
    ids, means, lasts, t0 = [], [], [], time.time()
    for iid, msgs in items.items():
        toks = b.prompt_tokens(msgs)
        llama_cpp.llama_memory_clear(mem, True)
        batch.n_tokens = len(toks)
        for i, tok in enumerate(toks):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, 1
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise SystemExit(f"{iid}: llama_decode failed")
        ptr = llama_cpp.llama_get_embeddings(ctx)
        a = np.ctypeslib.as_array(ptr, shape=(len(toks) * n_embd,)).reshape(len(toks), n_embd)
        ids.append(iid)
        means.append(a.mean(0))
        lasts.append(a[-1].copy())
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / f"{model}.npz", ids=np.array(ids),
                        mean=np.array(means, np.float32), last=np.array(lasts, np.float32))
    print(f"{len(ids)} prompts in {time.time() - t0:.0f} s -> {OUT / f'{model}.npz'}")


def score(model: str) -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from confroute.panel import load_panel
    from confroute.query import query_features, question_of
    from confroute.traces import read_columnar

    template = load_panel("configs/panel.cpu.yaml").prompt.template

    correct: dict[str, dict[str, bool]] = defaultdict(dict)
    text, dset = {}, {}
    for f in sorted(TRACES.glob("*.traces.npz")):
        for t in read_columnar(f):
            correct[t.item_id][t.model] = bool(t.correct)
            text[t.item_id] = t.messages[-1].content
            dset[t.item_id] = f.name.split(".")[0]
    h = np.load(OUT / f"{model}.npz")
    ids = list(h["ids"])
    y_all = np.array([[correct[i][m] for m in JUDGED] for i in ids])
    sets = np.array([dset[i] for i in ids])
    groups = np.unique([text[i] for i in ids], return_inverse=True)[1]  # one group per text
    # the cascade's own question features: of the bare question, the template stripped
    bare = [question_of(text[i], template) for i in ids]
    reps = {"length + numbers": np.array([query_features(q) for q in bare]),
            "hidden, mean-pooled": h["mean"], "hidden, last token": h["last"]}

    def probe(name: str) -> object:
        if name == "length + numbers":
            return make_pipeline(StandardScaler(), LogisticRegression())
        return make_pipeline(StandardScaler(), PCA(32, random_state=0),
                             LogisticRegression(C=0.1, max_iter=2000))

    for name, x in reps.items():
        cells = []
        for j, judged in enumerate(JUDGED):
            y, p = y_all[:, j], np.zeros(len(ids))
            for tr, te in GroupKFold(5).split(x, y, groups):
                p[te] = probe(name).fit(x[tr], y[tr]).predict_proba(x[te])[:, 1]  # type: ignore[attr-defined]
            within = np.mean([roc_auc_score(y[sets == s], p[sets == s])
                              for s in np.unique(sets) if len(set(y[sets == s])) > 1])
            left = []
            for s in np.unique(sets):
                tr, te = sets != s, sets == s
                if len(set(y[te])) > 1:
                    q = probe(name).fit(x[tr], y[tr]).predict_proba(x[te])[:, 1]  # type: ignore[attr-defined]
                    left.append(f"{s} {roc_auc_score(y[te], q):.2f}")
            cells.append(f"{judged}: cv {roc_auc_score(y, p):.3f}, within a set {within:.3f}; "
                         f"left out: {', '.join(left)}")
        print(f"{name}\n  " + "\n  ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("extract", "score"):
        raise SystemExit(__doc__)
    (extract if sys.argv[1] == "extract" else score)(sys.argv[2])
