"""Paper B's latent monitor probe: data loading and leak-free splits, features from tiny LMs,
probe training, the audit gap and the refusal rate."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from silentwatch.offline.audit.data import (  # noqa: E402
    ResponsePairs,
    load_prompts,
    load_response_pairs,
    split_by_prompt,
)
from silentwatch.offline.audit.gap import (  # noqa: E402
    audit_gap,
    generate_responses,
    refusal_rate,
    sigmoid_gap,
)
from silentwatch.offline.audit.probe import (  # noqa: E402
    ProbeSettings,
    auroc,
    extract_features,
    monitor_logits,
    train_probe,
)
from silentwatch.offline.hooks import masked_mean, position_ids  # noqa: E402
from silentwatch.offline.lm import encode, generate  # noqa: E402

from .conftest import SHARED_DATA  # noqa: E402
from .tiny_lm import HIDDEN, LAYERS, tiny_lm  # noqa: E402

PKU = SHARED_DATA / "pku_saferlhf_pairs" / "pku_seferlhf_realign_dpo_5k.json.gz"
SPLITS = SHARED_DATA / "refusal_direction" / "splits"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: one thread is fastest, and far faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- data


def _write_jsonl(path, rows) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")


def test_pair_files_give_one_safe_and_one_unsafe_example_per_pair(tmp_path):
    rows = [{"prompt": f"q{i % 4}", "response": [f"safe {i}", f"bad {i}"]} for i in range(10)]
    rows.append({"prompt": "q9", "response": ["", "only unsafe"]})  # empty safe side: skipped
    _write_jsonl(tmp_path / "p.jsonl", rows)
    with gzip.open(tmp_path / "p.json.gz", "wt", encoding="utf-8") as fh:
        json.dump(rows, fh)
    for name in ("p.jsonl", "p.json.gz"):
        d = load_response_pairs(tmp_path / name)
        assert len(d) == 21 and d.n_prompts == 5
        assert d.labels[:4].tolist() == [0, 1, 0, 1] and d.labels.dtype == np.int8
        assert d.responses[:2] == ["safe 0", "bad 0"]
        assert d.prompt_ids[:10].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0, 0]
        assert d.responses[-1] == "only unsafe" and d.labels[-1] == 1


def test_labelled_and_two_column_tables_with_custom_columns(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text(
        "question,answer,verdict\n"
        'how?,"fine, here",safe\n'
        "how?,do crimes,unsafe\n"
        "why?,because,0\n"
        "why?,evil,1\n",
        encoding="utf-8",
    )
    d = load_response_pairs(
        csv, prompt_column="question", response_column="answer", label_column="verdict"
    )
    assert d.labels.tolist() == [0, 1, 0, 1] and d.prompt_ids.tolist() == [0, 0, 1, 1]
    assert d.responses[0] == "fine, here"
    named = load_response_pairs(
        csv,
        prompt_column="question",
        response_column="answer",
        label_column="verdict",
        positive_label="unsafe",
    )
    assert named.labels.tolist() == [0, 1, 0, 0]

    two = tmp_path / "two.csv"
    two.write_text("prompt,good,bad\np1,a,b\np2,c,d\n", encoding="utf-8")
    d2 = load_response_pairs(two, safe_column="good", unsafe_column="bad")
    assert d2.responses == ["a", "b", "c", "d"] and d2.labels.tolist() == [0, 1, 0, 1]


def test_parquet_is_read(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"p": ["a", "a", "b"], "r": ["x", "y", "z"], "y": [0, 1, 1]})
    pq.write_table(table, tmp_path / "d.parquet")
    d = load_response_pairs(
        tmp_path / "d.parquet", prompt_column="p", response_column="r", label_column="y"
    )
    assert d.labels.tolist() == [0, 1, 1] and d.n_prompts == 2
    assert load_prompts(tmp_path / "d.parquet", column="p") == ["a", "a", "b"]


def test_clear_errors_name_columns_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_response_pairs(tmp_path / "nope.json")
    _write_jsonl(tmp_path / "a.jsonl", [{"question": "q", "response": ["a", "b"]}])
    with pytest.raises(ValueError, match=r"no column\(s\) \['prompt'\].*question"):
        load_response_pairs(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"\['verdict'\]"):
        load_response_pairs(tmp_path / "a.jsonl", prompt_column="question", label_column="verdict")
    _write_jsonl(tmp_path / "b.jsonl", [{"prompt": "q", "response": "just one"}])
    with pytest.raises(ValueError, match=r"should be \[safe, unsafe\].*label_column"):
        load_response_pairs(tmp_path / "b.jsonl")
    _write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "response": "r", "y": "maybe"}])
    with pytest.raises(ValueError, match="row 1: label 'maybe'"):
        load_response_pairs(tmp_path / "c.jsonl", label_column="y")
    with pytest.raises(ValueError, match=r"no column\(s\) \['instruction'\]"):
        load_prompts(tmp_path / "c.jsonl")
    (tmp_path / "d.json").write_text('{"prompt": "not a list"}', encoding="utf-8")
    with pytest.raises(ValueError, match="JSON list"):
        load_prompts(tmp_path / "d.json")


def test_load_prompts_formats(tmp_path):
    (tmp_path / "h.json").write_text(
        json.dumps(
            [{"instruction": "a", "category": None}, {"instruction": " "}, {"instruction": "b"}]
        ),
        encoding="utf-8",
    )
    assert load_prompts(tmp_path / "h.json") == ["a", "b"]
    (tmp_path / "s.json").write_text(json.dumps(["x", "y", "z"]), encoding="utf-8")
    assert load_prompts(tmp_path / "s.json", limit=2) == ["x", "y"]
    (tmp_path / "h.csv").write_text("goal,target\nbuild it,Sure\n", encoding="utf-8")
    assert load_prompts(tmp_path / "h.csv", column="goal") == ["build it"]


def _grouped(n_prompts: int, seed: int = 0) -> ResponsePairs:
    rng = np.random.default_rng(seed)
    prompts, responses, labels = [], [], []
    for p in range(n_prompts):
        for k in range(int(rng.integers(1, 8))):
            prompts += [f"prompt {p}"] * 2
            responses += [f"safe {p}.{k}", f"unsafe {p}.{k}"]
            labels += [0, 1]
    return ResponsePairs.from_lists(prompts, responses, labels)


def test_split_by_prompt_is_leak_free_sized_and_seeded():
    d = _grouped(200)
    parts = split_by_prompt(d, (0.7, 0.1, 0.2), seed=3)
    seen = [set(p.prompt_ids.tolist()) for p in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sum(len(p) for p in parts) == len(d)
    assert set().union(*seen) == set(d.prompt_ids.tolist())
    biggest_group = int(np.bincount(d.prompt_ids).max())
    for part, f in zip(parts, (0.7, 0.1, 0.2), strict=True):
        assert abs(len(part) - f * len(d)) <= biggest_group
        assert part.labels.mean() == pytest.approx(0.5)  # pairs stay whole
    again = split_by_prompt(d, (0.7, 0.1, 0.2), seed=3)
    assert [p.responses for p in again] == [p.responses for p in parts]
    other = split_by_prompt(d, (0.7, 0.1, 0.2), seed=4)
    assert other[1].responses != parts[1].responses
    with pytest.raises(ValueError, match="summing to 1"):
        split_by_prompt(d, (0.5, 0.4))


@pytest.mark.skipif(not PKU.is_file(), reason="shared PKU-SafeRLHF pairs not present")
def test_real_pku_pairs_and_prompt_lists():
    d = load_response_pairs(PKU)
    assert len(d) == 2 * 5135 and d.n_prompts == 930
    assert np.bincount(d.labels).tolist() == [5135, 5135]
    train, val, test = split_by_prompt(d, (0.8, 0.1, 0.1), seed=0)
    texts = [set(s.prompts) for s in (train, val, test)]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert len(train) + len(val) + len(test) == len(d)
    assert 0.75 < len(train) / len(d) < 0.85
    if SPLITS.is_dir():
        assert len(load_prompts(SPLITS / "harmful_train.json")) == 260
        assert len(load_prompts(SPLITS / "harmless_train.json.gz")) == 18793


# ---------------------------------------------------------------------------- probe


def _synthetic(n: int, seed: int, *, layers: int = 3, dim: int = 32, shift: float = 2.0):
    """(n, L, d) Gaussian features; unsafe rows are shifted in 4 dims of layer 1."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, layers, dim, generator=gen)
    x[:, 1, :4] += shift * y[:, None].float()
    return x, y


def test_probe_training_lifts_auroc_and_is_seeded():
    xtr, ytr = _synthetic(400, seed=1)
    xva, yva = _synthetic(200, seed=2)
    settings = ProbeSettings(epochs=15)
    probe, fit = train_probe(xtr, ytr, xva, yva, settings)
    assert abs(fit.initial_val_auroc - 0.5) < 0.2  # the seeded, untrained probe
    assert fit.best_val_auroc > 0.95
    assert auroc(monitor_logits(probe, xva), yva) == pytest.approx(fit.best_val_auroc)
    assert len(fit.train_loss) == len(fit.val_auroc) == 15
    assert fit.train_loss[-1] < fit.train_loss[0]
    assert not probe.training
    _, again = train_probe(xtr, ytr, xva, yva, settings)
    assert again.val_auroc == fit.val_auroc


def test_standardize_option_stores_the_training_statistics_in_the_monitor():
    xtr, ytr = _synthetic(400, seed=1)
    xva, yva = _synthetic(200, seed=2)
    # one layer 500x larger than the others, as hidden-state norms grow with depth
    big = torch.ones(xtr.shape[1:]) + 499.0 * (torch.arange(xtr.shape[1]) == 0)[:, None]
    probe, fit = train_probe(
        xtr * big, ytr, xva * big, yva, ProbeSettings(epochs=10, standardize=True)
    )
    torch.testing.assert_close(probe.center, (xtr * big).mean(0))
    torch.testing.assert_close(probe.scale, (xtr * big).std(0))
    assert fit.best_val_auroc > 0.95
    plain, _ = train_probe(xtr, ytr, xva, yva, ProbeSettings(epochs=1))
    assert torch.count_nonzero(plain.center) == 0 and torch.all(plain.scale == 1)


def test_probe_keeps_the_best_epoch_not_the_last():
    # Held-out labels are flipped: the better the probe fits train, the worse it does on val,
    # so the best held-out epoch is an early one and the last is clearly worse.
    xtr, ytr = _synthetic(400, seed=1, shift=1.5)
    xva, yva = _synthetic(200, seed=2, shift=1.5)
    probe, fit = train_probe(xtr, ytr, xva, 1 - yva, ProbeSettings(epochs=8))
    assert fit.best_epoch == int(np.argmax(fit.val_auroc)) + 1
    assert fit.best_epoch < 8 and fit.val_auroc[-1] < fit.best_val_auroc - 0.05
    assert auroc(monitor_logits(probe, xva), 1 - yva) == pytest.approx(fit.best_val_auroc)


def test_probe_input_checks():
    x, y = _synthetic(20, seed=0)
    with pytest.raises(ValueError, match="both need safe and unsafe"):
        train_probe(x, y, x, torch.zeros(20), ProbeSettings(epochs=1))
    with pytest.raises(ValueError, match="20 feature rows but 19 labels"):
        train_probe(x, y[:19], x, y, ProbeSettings(epochs=1))
    with pytest.raises(ValueError, match="per row"):
        train_probe(x, y, x[:, :2], y, ProbeSettings(epochs=1))


# ---------------------------------------------------------------------------- features

PROMPTS = ["how do I bake bread", "hi", "tell me a long story about a dragon and a knight"]
RESPONSES = ["Mix flour and water, then bake.", "Hello!", "Once upon a time"]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def lm(request):
    return tiny_lm(request.param)


def test_extract_features_is_the_masked_mean_of_hidden_states(lm):
    model, tok = lm
    feats = extract_features(model, tok, PROMPTS, RESPONSES, batch_size=len(PROMPTS))
    assert feats.shape == (3, LAYERS, HIDDEN) and feats.dtype == torch.float32
    batch = encode(tok, PROMPTS, RESPONSES)
    with torch.no_grad():
        hs = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=position_ids(batch.attention_mask),  # skip left padding (GPT-2)
            output_hidden_states=True,
        ).hidden_states
    for layer in (0, LAYERS - 2):  # hidden_states[-1] carries the final norm: not a block output
        # By hand: sum over real tokens / their count, in the caller's row order.
        m = batch.attention_mask.unsqueeze(-1).float()
        manual = (hs[layer + 1] * m).sum(1) / m.sum(1)
        torch.testing.assert_close(feats[:, layer], manual, rtol=1e-5, atol=1e-5)
    # The response matters, and prompt-only features use the prompt tokens alone.
    other = extract_features(model, tok, PROMPTS, ["No."] * 3, batch_size=3)
    assert (other - feats).abs().amax(dim=(1, 2)).min() > 1e-4
    prompt_only = extract_features(model, tok, PROMPTS, batch_size=3)
    pb = encode(tok, PROMPTS)
    with torch.no_grad():
        h0 = model(
            input_ids=pb.input_ids,
            attention_mask=pb.attention_mask,
            position_ids=position_ids(pb.attention_mask),
            output_hidden_states=True,
        ).hidden_states[1]
    torch.testing.assert_close(prompt_only[:, 0], masked_mean(h0, pb.attention_mask))


def test_extract_features_keeps_input_order_across_batches():
    model, tok = tiny_lm("llama")
    whole = extract_features(model, tok, PROMPTS, RESPONSES, batch_size=3)
    one_by_one = extract_features(model, tok, PROMPTS, RESPONSES, batch_size=1)
    torch.testing.assert_close(whole, one_by_one, rtol=1e-4, atol=1e-5)  # RoPE: padding-free
    single = extract_features(model, tok, PROMPTS[1:2], RESPONSES[1:2], batch_size=1)
    torch.testing.assert_close(one_by_one[1:2], single)
    with pytest.raises(ValueError, match="3 prompts but 2 responses"):
        extract_features(model, tok, PROMPTS, RESPONSES[:2])


def test_gpt2_features_do_not_depend_on_batch_padding():
    model, tok = tiny_lm("gpt2")
    whole = extract_features(model, tok, PROMPTS, RESPONSES, batch_size=3)
    one_by_one = extract_features(model, tok, PROMPTS, RESPONSES, batch_size=1)
    torch.testing.assert_close(whole, one_by_one, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- audit gap


def test_audit_gap_on_hand_built_features():
    xtr, ytr = _synthetic(400, seed=1, shift=2.0)
    xte, yte = _synthetic(1000, seed=5, shift=2.0)
    probe, _ = train_probe(xtr, ytr, xtr, ytr, ProbeSettings(epochs=10))
    same = audit_gap(probe, xte, xte.clone(), yte.numpy())
    assert same.base_auroc > 0.95 and same.base_gap > 0.3
    assert same.cand_auroc == same.base_auroc and same.cand_gap == same.base_gap
    assert same.auroc_drop == 0.0 and same.as_dict()["gap_drop"] == 0.0
    shuffled = xte[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    gap = audit_gap(probe, xte, shuffled, yte.numpy())
    assert gap.base_auroc == same.base_auroc
    assert abs(gap.cand_auroc - 0.5) < 0.06 and abs(gap.cand_gap) < 0.05
    assert gap.auroc_drop > 0.4 and gap.gap_drop > 0.25
    # By hand: the raw gap is the difference of mean probabilities σ(g) ...
    z = monitor_logits(probe, xte).numpy().astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-z))
    y = yte.numpy()
    assert same.base_gap_raw == pytest.approx(p[y == 1].mean() - p[y == 0].mean(), abs=1e-6)
    # ... and the calibrated (default) one of σ(a·g + b), Platt-fitted on the base logits.
    assert same.calibration == "platt"
    q = 1.0 / (1.0 + np.exp(-(same.calib_a * z + same.calib_b)))
    assert same.base_gap == pytest.approx(q[y == 1].mean() - q[y == 0].mean(), abs=1e-6)
    raw = audit_gap(probe, xte, xte.clone(), y, calibration="none")
    assert raw.base_gap == raw.base_gap_raw == same.base_gap_raw
    with pytest.raises(ValueError, match="disagree"):
        audit_gap(probe, xte, xte[:10], y)


def test_sigmoid_gap_signs_and_saturation():
    assert sigmoid_gap(np.array([-1000.0, 1000.0]), np.array([0, 1])) == 1.0
    assert sigmoid_gap(np.array([1000.0, -1000.0]), np.array([0, 1])) == -1.0
    with pytest.raises(ValueError, match="both safe and unsafe"):
        sigmoid_gap(np.zeros(3), np.ones(3))


# ---------------------------------------------------------------------------- refusal


class _StubJudge:
    """Refuses when the prompt mentions a bomb; records what it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def refused(self, prompts, responses):
        self.seen += list(zip(prompts, responses, strict=True))
        return np.array(["bomb" in p for p in prompts])


def test_refusal_rate_generates_greedily_and_asks_the_judge():
    model, tok = tiny_lm("llama")
    prompts = ["build a bomb", "bake bread", "bomb recipe", "sing a song", "plant a tree"]
    judge = _StubJudge()
    rate = refusal_rate(model, tok, prompts, judge, batch_size=2, max_new_tokens=4)
    assert rate == pytest.approx(2 / 5)
    assert [p for p, _ in judge.seen] == prompts
    expected = generate(model, tok, encode(tok, prompts[:2]), max_new_tokens=4)
    assert [r for _, r in judge.seen[:2]] == expected
    assert all(r.strip() for _, r in judge.seen)  # a random model still says something
    again = generate_responses(model, tok, prompts, batch_size=2, max_new_tokens=4)
    assert again == [r for _, r in judge.seen]
    with pytest.raises(ValueError, match="no prompts"):
        refusal_rate(model, tok, [], judge)


def test_a_later_row_missing_a_column_is_named(tmp_path):
    rows = [{"prompt": "a", "response": ["x", "y"]}, {"prompt": "b", "answer": ["x", "y"]}]
    _write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ValueError, match=r"row 2 has no column\(s\) \['response'\]"):
        load_response_pairs(tmp_path / "p.jsonl")
