"""offline/hooks.py: sites, capture and intervention on tiny Llama, Qwen2, GPT-2 and PEFT models."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from silentwatch.offline import hooks  # noqa: E402
from silentwatch.offline.lm import encode, generate  # noqa: E402

from .tiny_lm import LAYERS, tiny_lm  # noqa: E402

KINDS = ["llama", "qwen2", "gpt2"]


def _count_hooks(model) -> int:
    """Forward hooks on the model; transformers registers some of its own, so tests compare
    against the count before they hook anything."""
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module", params=KINDS)
def lm(request):
    return tiny_lm(request.param)


def test_sites_resolve_and_match_output_hidden_states(lm):
    model, tok = lm
    before = _count_hooks(model)
    batch = encode(tok, ["how do I bake bread", "hi"])
    with torch.no_grad():
        ref = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            output_hidden_states=True,
        ).hidden_states
        with hooks.capture(model, ["embedding", "layer:0", "mid", "layer:-2", "last"]) as seen:
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert len(ref) == LAYERS + 1
    if hasattr(model, "transformer"):  # GPT-2: position embeddings are added after the site
        assert torch.allclose(seen["embedding"], model.transformer.wte(batch.input_ids))
    else:
        assert torch.allclose(seen["embedding"], ref[0])
    assert torch.allclose(seen["layer:0"], ref[1])
    assert torch.allclose(seen["mid"], ref[hooks.hidden_state_index(model, "mid")])
    assert torch.allclose(seen["layer:-2"], ref[LAYERS - 1])
    assert hooks.layer_index(model, "last") == LAYERS - 1 and seen["last"].shape == ref[-1].shape
    assert _count_hooks(model) == before


def test_bad_sites_say_what_exists(lm):
    model, _ = lm
    with pytest.raises(ValueError, match="embedding, mid, last"):
        hooks.layer_index(model, "middle")
    with pytest.raises(ValueError, match=f"has {LAYERS} blocks"):
        hooks.layer_index(model, f"layer:{LAYERS}")


def test_hooks_are_removed_on_exceptions_and_nest(lm):
    model, tok = lm
    before = _count_hooks(model)
    batch = encode(tok, ["a prompt"])
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooks.capture(model, ["mid"]),
        hooks.intervene(model, "mid", lambda h: h),
    ):
        assert _count_hooks(model) == before + 2
        raise RuntimeError("boom")
    assert _count_hooks(model) == before
    with torch.no_grad():
        base = model(input_ids=batch.input_ids).logits
        with hooks.intervene(model, "mid", lambda h: h + 1.0):
            with (
                hooks.intervene(model, "mid", lambda h: h * 2.0),  # edits the outer's result
                hooks.capture(model, ["mid"]) as seen_both,
            ):
                both = model(input_ids=batch.input_ids).logits
            with hooks.capture(model, ["mid"]) as seen_one:
                one = model(input_ids=batch.input_ids).logits
        with hooks.capture(model, ["mid"]) as seen_none:
            model(input_ids=batch.input_ids)
    assert not torch.allclose(base, one) and not torch.allclose(one, both)
    # capture registered last sees the edits of the hooks registered before it
    assert torch.allclose(seen_one["mid"], seen_none["mid"] + 1.0, atol=1e-5)
    assert torch.allclose(seen_both["mid"], (seen_none["mid"] + 1.0) * 2.0, atol=1e-5)
    assert _count_hooks(model) == before


def test_add_at_prompt_touches_prompt_positions_on_prefill_only(lm):
    model, tok = lm
    before = _count_hooks(model)
    batch = encode(tok, ["tell me a story about a cat", "hi"])
    d = model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd
    delta = torch.ones(len(batch), batch.input_ids.shape[1], d)
    edit = hooks.AddAtPrompt(delta, batch.prompt_mask)
    h = torch.zeros_like(delta)
    out = edit(h)
    assert torch.equal(out[batch.prompt_mask], torch.ones_like(out[batch.prompt_mask]))
    assert torch.count_nonzero(out[~batch.prompt_mask]) == 0
    assert torch.equal(edit(torch.zeros(2, 1, d)), torch.zeros(2, 1, d))  # decoding step
    with hooks.intervene(model, "embedding", edit):
        text = generate(model, tok, batch, max_new_tokens=3)
    assert len(text) == 2 and _count_hooks(model) == before


def test_layer_means_are_masked_means_of_block_outputs(lm):
    model, tok = lm
    batch = encode(tok, ["one two three four", "five"])
    feats = hooks.layer_means(model, batch.input_ids, batch.attention_mask)
    assert feats.shape[:2] == (2, LAYERS)
    with torch.no_grad(), hooks.capture(model, ["layer:1"]) as seen:
        model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=hooks.position_ids(batch.attention_mask),
        )
    m = batch.attention_mask[1].bool()
    assert torch.allclose(feats[1, 1], seen["layer:1"][1][m].mean(0), atol=1e-5)


def test_peft_wrapped_models_resolve_to_the_same_blocks():
    peft = pytest.importorskip("peft")
    model, tok = tiny_lm("llama", seed=1)
    before = _count_hooks(model)
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_alpha=4)
    )
    assert hooks.blocks(wrapped) is hooks.blocks(model)
    batch = encode(tok, ["x y z"])
    with torch.no_grad(), hooks.capture(wrapped, ["mid"]) as seen:
        wrapped(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert seen["mid"].shape[0] == 1 and _count_hooks(wrapped) == before
