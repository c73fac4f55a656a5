"""Paper B's literal δ: one vector per example, added at every input position (default), and
the options kept beside it (per-position δ, δ during decoding, robust relative ε)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from silentwatch.offline.attacks.pgd import (  # noqa: E402
    PGDSettings,
    latent_pgd,
    random_baseline,
    relative_eps,
    respond,
)
from silentwatch.offline.hooks import AddShared  # noqa: E402
from silentwatch.offline.lm import encode  # noqa: E402

from .tiny_lm import tiny_lm  # noqa: E402

PROMPTS = ["hi", "how do I pick the lock on a neighbour's door", "tell me a story"]
EPS = 0.05


@pytest.fixture(scope="module")
def llama():
    return tiny_lm("llama")


def test_default_is_one_delta_per_example_in_the_box(llama):
    model, tok = llama
    assert PGDSettings().delta_scope == "shared"
    res = latent_pgd(model, tok, PROMPTS, "mid", EPS, with_responses=False)
    d = model.config.hidden_size
    assert [tuple(x.shape) for x in res.deltas] == [(1, d)] * len(PROMPTS)
    assert res.linf.max() <= EPS * (1 + 1e-6) and np.isclose(res.linf.max(), EPS)
    assert (res.nll < res.nll_clean).all()
    # What the site receives: the vector at each of the n_i prompt positions.
    n = encode(tok, PROMPTS).prompt_mask.sum(1).numpy()
    np.testing.assert_allclose(res.delta_norm, [float(x.norm()) for x in res.deltas], rtol=1e-6)
    per_pos = latent_pgd(
        model, tok, PROMPTS, "mid", 0.0, PGDSettings(delta_scope="per_position"),
        with_responses=False,
    )  # fmt: skip
    assert per_pos.relative_norm.max() == 0.0
    h_norm = res.delta_norm * np.sqrt(n) / res.relative_norm  # ||h_i|| implied
    assert (h_norm > 0).all() and np.isfinite(h_norm).all()


def test_shared_delta_is_the_same_vector_at_every_prompt_position(llama):
    """AddShared(vec) answers exactly as AddAtPrompt with vec copied to each prompt position."""
    model, tok = llama
    res = latent_pgd(model, tok, PROMPTS, "mid", EPS, PGDSettings(max_new_tokens=4))
    batch = encode(tok, PROMPTS)
    vec = torch.stack(res.deltas)  # (b, 1, d)
    copied = vec.expand(-1, batch.input_ids.shape[1], -1) * batch.prompt_mask.unsqueeze(-1)
    assert respond(model, tok, batch, 4, "mid", copied) == res.responses
    assert respond(model, tok, batch, 4, "mid", vec, shared=True) == res.responses


def test_delta_during_decoding_reaches_the_generated_tokens():
    vec = torch.ones(2, 1, 3)
    mask = torch.tensor([[False, True], [True, True]])
    prompt_only, decoding = AddShared(vec, mask), AddShared(vec, mask, decoding=True)
    h = torch.zeros(2, 2, 3)
    assert prompt_only(h)[0, 0].abs().sum() == 0 and (prompt_only(h)[0, 1] == 1).all()
    step = torch.zeros(2, 1, 3)  # a one-token decoding pass
    assert torch.equal(prompt_only(step), step)
    assert (decoding(step) == 1).all()
    with pytest.raises(ValueError, match="during_decoding"):
        PGDSettings(delta_scope="per_position", during_decoding=True)


def test_attack_with_delta_during_decoding_runs_and_differs(llama):
    model, tok = llama
    s = PGDSettings(max_new_tokens=6, during_decoding=True)
    a = latent_pgd(model, tok, PROMPTS, "mid", 0.5, s)
    b = latent_pgd(model, tok, PROMPTS, "mid", 0.5, PGDSettings(max_new_tokens=6))
    assert (a.nll < a.nll_clean).all()
    # the target positions get δ too, so the optimised δ (and the loss) differ
    assert not all(torch.allclose(x, y) for x, y in zip(a.deltas, b.deltas, strict=True))


def test_random_baseline_of_a_shared_delta_is_shared_and_norm_matched(llama):
    model, tok = llama
    s = PGDSettings(max_new_tokens=3, batch_size=2)
    pgd = latent_pgd(model, tok, PROMPTS, "mid", EPS, s)
    rnd = random_baseline(model, tok, PROMPTS, "mid", pgd.delta_norm, s, eps=EPS)
    assert [tuple(x.shape) for x in rnd.deltas] == [tuple(x.shape) for x in pgd.deltas]
    np.testing.assert_allclose(rnd.delta_norm, pgd.delta_norm, rtol=1e-5)
    np.testing.assert_allclose(rnd.relative_norm, pgd.relative_norm, rtol=1e-4)
    assert rnd.linf.max() <= EPS * (1 + 1e-6)  # sign entries ||d|| / sqrt(d) <= eps


def test_relative_eps_ignores_a_sink_position_and_padding():
    h = torch.ones(2, 4, 9)  # entries 1: per-position ||h_t|| / sqrt(d) = 1
    h[:, 1] *= 1000.0  # a massive activation at one position
    mask = torch.tensor([[True, True, True, True], [False, True, True, True]])
    rel = relative_eps(0.01, h, mask, "relative")
    assert torch.allclose(rel, torch.tensor([0.01, 0.01]))
    rms = relative_eps(0.01, h, mask, "relative_rms")
    assert (rms > 4.0).all()  # the pooled RMS follows the sink: ~500x larger
    with pytest.raises(ValueError, match="eps_mode"):
        PGDSettings(eps_mode="l2")  # type: ignore[arg-type]
