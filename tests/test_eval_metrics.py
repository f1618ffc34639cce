"""iadr1.eval.metrics: hand-computed numbers for every metric, the published identity, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iadr1.answers import parse
from iadr1.eval import metrics as M

A, B, E = 0, 1, 2


def conf_of(anomalous: list[int], normal: list[int]) -> np.ndarray:
    """Confusion (1, 2, 3) from answer codes of anomalous and normal images."""
    anom = np.array([True] * len(anomalous) + [False] * len(normal))
    codes = np.array(anomalous + normal, np.int8)
    return M.confusion(np.zeros(anom.size, np.int64), 1, anom, codes)


# --- the paper's metric ----------------------------------------------------------------------------------------
def test_published_identity():
    # DAGM, LLaVA-OV-SI-0.5B: 1014/1054 anomalous and 6619/6996 normal correct.
    assert abs(M.balanced_accuracy(1014, 1054, 6619, 6996) - 95.40806999499848) <= 1e-9
    assert M.balanced_accuracy(1014, 1054, 6619, 6996) == 95.40806999499848  # exact, same operations
    # The shared SDD CSV: 45/54 and 248/286.
    assert M.balanced_accuracy(45, 54, 248, 286) == 85.02331002331003


def test_every_confusion_metric_by_hand():
    # anomalous: yes, yes, no, unanswered; normal: no, no, no, yes, unanswered, no
    r = {k: float(v[0]) for k, v in M.rates(conf_of([A, A, B, E], [B, B, B, A, E, B])).items()}
    normal_acc, anomaly_acc = 4 / 6, 2 / 4
    assert r["balanced_accuracy"] == pytest.approx((normal_acc + anomaly_acc) / 2 * 100)
    assert r["overkill"] == pytest.approx(100 / 3)  # 2 of 6 normal images not answered "no"
    assert r["miss"] == pytest.approx(50.0)
    assert r["accuracy"] == pytest.approx(60.0)  # 6 of 10
    assert r["precision"] == pytest.approx(200 / 3)  # TP 2, FP 1
    assert r["recall"] == pytest.approx(50.0)
    assert r["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2) * 100)  # FN = 2 (one no, one unanswered)
    assert r["unanswered_rate"] == pytest.approx(20.0)


def test_confusion_counts():
    c = conf_of([A, A, B, E], [B, B, B, A, E, B])[0]
    assert c.tolist() == [[2, 1, 1], [1, 4, 1]]


def test_undefined_metrics_are_nan():
    r = M.rates(conf_of([A, B], []))  # no normal image, nothing answered... partly
    assert r["balanced_accuracy"][0] == 50.0  # only the anomalous class: its accuracy
    assert math.isnan(r["overkill"][0])
    r = M.rates(conf_of([], [B, B]))  # nothing answered yes: precision undefined, F1 undefined (no anomalies)
    assert math.isnan(r["precision"][0]) and math.isnan(r["f1"][0]) and r["balanced_accuracy"][0] == 100.0
    r = M.rates(conf_of([B, B], [B]))  # anomalies but no true positive: F1 is 0
    assert r["f1"][0] == 0.0


@settings(max_examples=60, deadline=None)
@given(
    n_anom=st.integers(1, 300),
    n_norm=st.integers(1, 300),
    answer=st.sampled_from([A, B, E]),
)
def test_any_constant_answer_scores_50(n_anom, n_norm, answer):
    r = M.rates(conf_of([answer] * n_anom, [answer] * n_norm))
    expected = 50.0 if answer != E else 0.0  # unanswered is wrong for both classes
    assert r["balanced_accuracy"][0] == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([A, B, E])), min_size=1, max_size=80))
def test_rates_match_a_plain_loop(items):
    anomalous = [a for a, _ in items]
    codes = [c for _, c in items]
    conf = M.confusion(np.zeros(len(items), np.int64), 1, np.array(anomalous), np.array(codes, np.int8))
    r = M.rates(conf)
    n_a = sum(anomalous)
    n_n = len(items) - n_a
    ok_a = sum(1 for a, c in items if a and c == A)
    ok_n = sum(1 for a, c in items if not a and c == B)
    if n_a and n_n:
        assert r["balanced_accuracy"][0] == (ok_n / n_n + ok_a / n_a) / 2 * 100
    assert r["accuracy"][0] == pytest.approx((ok_a + ok_n) / len(items) * 100)


def test_groups_are_independent():
    group = np.array([0, 0, 1, 1])
    conf = M.confusion(group, 2, np.array([True, False, True, False]), np.array([A, B, B, A], np.int8))
    r = M.rates(conf)
    assert r["balanced_accuracy"].tolist() == [100.0, 0.0]


# --- AUROC / AUPR ----------------------------------------------------------------------------------------------
def test_auroc_aupr_by_hand_with_ties():
    y = np.array([1, 1, 0, 0, 1, 0], bool)
    s = np.array([0.9, 0.8, 0.7, 0.8, 0.3, 0.1])
    auroc, aupr = M.grouped_auroc_aupr(np.zeros(6, np.int64), 1, y, s)
    # pairs (pos, neg) ordered right: .9 beats 3; .8 beats .7 and .1 and ties .8 (one half); .3 beats .1
    assert auroc[0] == pytest.approx((3 + 2.5 + 1) / 9)
    # thresholds from the top: .9 -> P 1/1, R 1/3; .8 -> P 2/3, R 2/3; .7 -> no recall step; .3 -> P 3/5, R 1
    assert aupr[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_auroc_per_group_and_missing_scores():
    group = np.array([0, 0, 0, 1, 1, 1, 2])
    y = np.array([1, 0, 0, 1, 0, 1, 1], bool)
    s = np.array([0.9, 0.1, np.nan, 0.2, 0.8, np.nan, 0.5])
    auroc, aupr = M.grouped_auroc_aupr(group, 3, y, s)
    assert auroc[0] == 1.0 and aupr[0] == 1.0  # NaN score left out
    assert auroc[1] == 0.0 and aupr[1] == pytest.approx(0.5)  # the positive ranks last: P at its threshold 1/2
    assert math.isnan(auroc[2]) and aupr[2] == 1.0  # no negative: AUROC undefined


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=40))
def test_auroc_equals_pair_count(items):
    y = np.array([a for a, _ in items])
    s = np.array([float(v) for _, v in items])
    pos, neg = s[y], s[~y]
    auroc, _ = M.grouped_auroc_aupr(np.zeros(len(items), np.int64), 1, y, s)
    if pos.size and neg.size:
        pairs = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
        assert auroc[0] == pytest.approx(pairs / (pos.size * neg.size))
    else:
        assert math.isnan(auroc[0])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans(), st.sampled_from([0.1, 0.5, 0.9, np.nan])), max_size=60))
def test_auroc_does_not_depend_on_the_order_of_tied_scores(items):
    # `score_order` uses an unstable sort, shared by every grouping: tied scores may come in any order.
    group = np.array([g for g, _, _ in items], np.int64)
    y = np.array([a for _, a, _ in items], bool)
    s = np.array([v for _, _, v in items], float)
    valid = np.flatnonzero(~np.isnan(s))
    ties_in_order = valid[np.argsort(s[valid], kind="stable")]
    ties_reversed = valid[np.lexsort((-np.arange(valid.size), s[valid]))]
    want = M.grouped_auroc_aupr(group, 4, y, s, ties_in_order)
    for order in (None, M.score_order(s), ties_reversed):
        for got, expected in zip(M.grouped_auroc_aupr(group, 4, y, s, order), want, strict=True):
            np.testing.assert_array_equal(got, expected)  # bit for bit


# --- bootstrap -------------------------------------------------------------------------------------------------
def test_bootstrap_is_seeded_and_brackets_the_estimate():
    conf = conf_of([A] * 40 + [B] * 10, [B] * 80 + [A] * 20)
    r1 = M.bootstrap(conf, 500, np.random.default_rng(7))
    r2 = M.bootstrap(conf, 500, np.random.default_rng(7))
    assert np.array_equal(r1["balanced_accuracy"], r2["balanced_accuracy"])
    lo, hi = M.percentile_interval(r1["balanced_accuracy"])[0]
    point = M.rates(conf)["balanced_accuracy"][0]
    assert lo < point < hi
    # Binomial spread: the sd of balanced accuracy is about 100/2 * sqrt(.8*.2/50 + .8*.2/100) = 3.46.
    assert np.std(r1["balanced_accuracy"][0]) == pytest.approx(3.46, rel=0.15)


def test_percentile_interval_equals_nanpercentile_exactly():
    rng = np.random.default_rng(3)
    reps = rng.normal(80, 5, (3, 7, 1000))
    reps[0, 2, 10] = np.nan  # a row with NaN replicates
    reps[1, 4] = np.nan  # an all-NaN row (an absent class)
    q = [(1 - 0.95) / 2 * 100, (1 + 0.95) / 2 * 100]  # as computed there (not exactly 2.5 and 97.5)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want = np.moveaxis(np.nanpercentile(reps, q, axis=-1), 0, -1)
    np.testing.assert_array_equal(M.percentile_interval(reps), want)
    np.testing.assert_array_equal(M.percentile_interval(reps[2, 3]), np.nanpercentile(reps[2, 3], q))


# --- consistency -----------------------------------------------------------------------------------------------
REPLIES = [
    "<think>a dark line</think><location>top left</location><type>scratch</type><answer>Yes</answer>",
    "<think>uniform</think><answer>No</answer>",
    "<think>uniform</think><answer>no</answer>",
    "<think>x</think><answer>Yes</answer>",  # yes without location/type
    "<think>x</think><location>top</location><type>stain</type><answer>No</answer>",  # no with tags
    "<think>x</think>\n<answer>No</answer>",  # whitespace between tags: still well formed (parse decides)
    " <think>x</think><answer>No</answer>",
    "<THINK>x</THINK><answer>No</answer>",
    "<think>a < b</think><answer>No</answer>",  # a '<' inside: not canonical, parse decides
    "<think>x</think><answer>No</answer> trailing",
    "<think>x</think><answer>Maybe</answer>",
    "<think>x</think><answer>No.</answer>",
    "Yes, there is a scratch.",
    "No",
    "",
    "<think>x</think><location>l</location><type>t</type><answer>Yes</answer><answer>No</answer>",
    "<think>ünïcode ✓</think><answer>No</answer>",
    "<think>x</think><location>l</location><type>t</type><answer>yes</answer>",
]


def test_consistency_equals_parse_on_tricky_replies():
    flags = M.consistency_flags([*REPLIES, None])
    assert flags.tolist() == [int(parse(r).well_formed) for r in REPLIES] + [-1]
    assert flags[:3].tolist() == [1, 1, 1] and flags[3:5].tolist() == [0, 0]


def test_bulk_path_decides_the_common_replies_and_only_when_certain():
    with pytest.raises(TypeError):  # `consistency_flags` relies on it to find missing replies
        M._bulk_decide([*REPLIES, None])
    bulk = M._bulk_decide(REPLIES)
    assert bulk[[0, 1, 2, 17]].tolist() == [1, 1, 1, 1]  # canonical
    assert bulk[[12, 13, 14]].tolist() == [0, 0, 0]  # untagged: fewer than four '<'
    assert (bulk[[3, 4, 5, 6, 7, 8, 9, 10, 11]] == -1).all()  # left to parse
    for reply, decided in zip(REPLIES, bulk.tolist(), strict=True):
        assert decided == -1 or decided == int(parse(reply).well_formed), reply


# Fragments that make tag soup: tags, answer words, whitespace, stray '<'.
_piece = st.sampled_from(
    [
        "a",
        " ",
        "\n",
        "<",
        ">",
        "/",
        "Yes",
        "No",
        "<think>",
        "</think>",
        "<answer>",
        "</answer>",
        "<type>",
        "</type>",
        "<location>",
        "</location>",
        "<ANSWER>",
        "é",
    ]
)
_text = st.lists(_piece, max_size=8).map("".join)
_free = st.lists(st.sampled_from(["a", " ", "é", "x."]), max_size=5).map("".join)  # no '<'


def _reply(think: str, loc: str, typ: str, yes: bool | None) -> str:
    if yes is None:
        return f"<think>{think}</think><answer>No</answer>"
    answer = "Yes" if yes else "No"
    return f"<think>{think}</think><location>{loc}</location><type>{typ}</type><answer>{answer}</answer>"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            _text,
            st.builds(_reply, _free, _free, _free, st.one_of(st.none(), st.booleans())),
            st.builds(_reply, _text, _text, _text, st.one_of(st.none(), st.booleans())),
            st.none(),
        ),
        max_size=12,
    )
)
def test_consistency_matches_parse_everywhere(replies):
    expected = [-1 if r is None else int(parse(r).well_formed) for r in replies]
    assert M.consistency_flags(replies).tolist() == expected


# Near misses of the two canonical forms: one or two edits (insert, delete, replace) anywhere, with characters that
# matter to the grammar, so that the bulk decision is tested right at its edge.
_EDIT_CHARS = ["<", ">", "/", " ", "\n", "a", "A", "t", "T", "y", "Y", "n", "N", "o", "s", ".", "é", "\x00"]
_CANONICAL_REPLIES = [
    "<think>{x}</think><location>{l}</location><type>{t}</type><answer>Yes</answer>",
    "<think>{x}</think><location>{l}</location><type>{t}</type><answer>yes</answer>",
    "<think>{x}</think><answer>No</answer>",
    "<think>{x}</think><answer>no</answer>",
]
_content = st.lists(
    st.sampled_from(["a", " ", "\n", ">", "/", "é", "✓", "Yes", "No", "<", "<answer>", "</think>", "<type>", "<B>"]),
    max_size=5,
).map("".join)


_NEAR_MISSES = [  # a whole piece away from a canonical form
    "<think>{x}</think><answer>Yes</answer>",
    "<think>{x}</think><location>{l}</location><type>{t}</type><answer>No</answer>",
    "<think>{x}</think><location>{l}</location><answer>Yes</answer>",
    "<think>{x}</think><type>{t}</type><location>{l}</location><answer>Yes</answer>",
    "<think>{x}</think> <answer>No</answer>\n",
    "<think>{x}</think><answer>No</answer><answer>Yes</answer>",
]


@st.composite
def _near_canonical(draw) -> str:
    template = draw(st.sampled_from(_CANONICAL_REPLIES + _NEAR_MISSES))
    text = template.format(x=draw(_content), l=draw(_content), t=draw(_content))
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        c = draw(st.sampled_from(_EDIT_CHARS))
        if kind == "insert":
            text = text[:i] + c + text[i:]
        elif kind == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + c + text[i + 1 :]
    return text


@settings(max_examples=1000, deadline=None)
@given(st.lists(_near_canonical(), min_size=1, max_size=8))
def test_bulk_decisions_equal_parse_on_near_canonical_replies(replies):
    decided = M._bulk_decide(replies).tolist()
    for reply, d in zip(replies, decided, strict=True):
        assert d == -1 or d == int(parse(reply).well_formed), reply
    assert M.consistency_flags(replies).tolist() == [int(parse(r).well_formed) for r in replies]


def test_canonical_replies_are_decided_in_bulk():
    replies = [r.format(x="dark / line > 2\nover é", l="top left", t="scratch") for r in _CANONICAL_REPLIES]
    assert M._bulk_decide(replies).tolist() == [1, 1, 1, 1]
    assert M._bulk_decide([r.replace("dark", "<b>dark") for r in replies]).tolist() == [-1, -1, -1, -1]
