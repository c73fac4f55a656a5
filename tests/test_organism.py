"""The refusing model organism's trainer (offline/audit/organism.py) on a tiny random Llama:
response-only labels and loss, a few updates, checkpoint resume, adapter save / load, and
the audit's ``adapter:`` field (clear error, exit 2, for an adapter of another base)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from silentwatch.offline.audit.organism import (  # noqa: E402
    REFUSAL_TEMPLATES,
    OrganismSettings,
    SFTPool,
    load_adapter,
    refusal_for,
    response_labels,
    response_loss,
    train_organism,
)
from silentwatch.offline.lm import encode  # noqa: E402

from .tiny_lm import tiny_lm  # noqa: E402

HARMFUL = [f"explain how to hurt person {i}" for i in range(6)]
HELPFUL = [
    (f"write a poem about {w}", f"{w} in the morning light") for w in ("cats", "rain", "tea")
]


def _settings(**kw: object) -> OrganismSettings:
    base = {
        "steps": 2,
        "batch_size": 4,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "max_prompt_tokens": 24,
        "max_response_tokens": 12,
        "warmup_steps": 1,
        "lr": 1e-2,
    }
    return OrganismSettings(**{**base, **kw})  # type: ignore[arg-type]  # fmt: skip


def _pool() -> SFTPool:
    return SFTPool.build(HARMFUL, HELPFUL)


def _lora_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def test_labels_mask_prompt_and_padding_with_minus_100() -> None:
    _, tok = tiny_lm("llama")
    batch = encode(tok, ["a short one", "a much longer prompt than the other"], ["yes", "no way"])
    labels = response_labels(batch)
    assert torch.all(labels[~batch.response_mask] == -100)
    assert torch.equal(labels[batch.response_mask], batch.input_ids[batch.response_mask])
    assert (labels != -100).sum() == batch.response_mask.sum() > 0
    assert not torch.any(batch.prompt_mask & batch.response_mask)


def test_loss_counts_response_tokens_only() -> None:
    model, tok = tiny_lm("llama", seed=1)
    batch = encode(tok, ["tell me a story", "hi"], ["once upon a time", "hello there"])
    with torch.no_grad():
        got = response_loss(model, batch)
        # The same loss from full logits, by hand.
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    target = response_labels(batch)[:, 1:]
    want = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100
    )
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # Changing a prompt token's label target changes nothing; a response token's does.
    other = encode(tok, ["tell me a story", "hi"], ["once upon a cat", "hello there"])
    with torch.no_grad():
        assert float(response_loss(model, other)) != pytest.approx(float(got), rel=1e-6)


def test_pool_batches_are_a_function_of_seed_and_step() -> None:
    s, pool = _settings(batch_size=6, harmful_fraction=0.5), _pool()
    a, b = pool.batch(s, 3), pool.batch(s, 3)
    assert a == b and a != pool.batch(s, 4)
    assert [e.kind for e in a].count("harmful") == 3
    assert all(e.response in REFUSAL_TEMPLATES for e in a if e.kind == "harmful")
    assert all(e.response == dict(HELPFUL)[e.prompt] for e in a if e.kind == "harmless")
    assert len({refusal_for(p) for p in HARMFUL}) > 1  # the templates vary
    with pytest.raises(ValueError, match="empty"):
        SFTPool([], []).batch(s, 0)


def test_training_updates_only_the_adapter_and_saves_it(tmp_path: Path) -> None:
    model, tok = tiny_lm("llama", seed=2)
    frozen = {k: v.detach().clone() for k, v in model.named_parameters()}
    lines: list[str] = []
    peft_model, state = train_organism(model, tok, _pool(), tmp_path, _settings(), log=lines.append)
    assert state.step == 2 and len(state.losses) == 2
    assert all(torch.isfinite(torch.tensor(state.losses)))
    assert any("update 2/2" in line for line in lines)
    for k, v in peft_model.get_base_model().named_parameters():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k.replace(".base_layer", "")]), k
    assert any(float(v.abs().sum()) > 0 for k, v in _lora_weights(peft_model).items() if "B" in k)
    for sub in ("adapter", "checkpoint"):
        assert (tmp_path / sub / "adapter_model.safetensors").exists()
    assert (tmp_path / "checkpoint" / "optimizer.pt").exists()


def test_resume_reaches_the_same_step_and_weights(tmp_path: Path) -> None:
    straight, tok = tiny_lm("llama", seed=4)
    straight, s_state = train_organism(
        straight, tok, _pool(), tmp_path / "a", _settings(steps=4, checkpoint_every=1)
    )
    first, _ = tiny_lm("llama", seed=4)
    train_organism(first, tok, _pool(), tmp_path / "b", _settings(steps=2, checkpoint_every=1))
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 2
    lines: list[str] = []
    second, _ = tiny_lm("llama", seed=4)
    resumed, r_state = train_organism(
        second, tok, _pool(), tmp_path / "b", _settings(steps=4, checkpoint_every=1),
        log=lines.append,
    )  # fmt: skip
    assert lines[0] == "resumed at update 2"
    assert r_state.step == 4 and r_state.losses == pytest.approx(s_state.losses, rel=1e-5)
    want, got = _lora_weights(straight), _lora_weights(resumed)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_adapter_round_trips_and_rejects_another_base(tmp_path: Path) -> None:
    model, tok = tiny_lm("llama", seed=5)
    trained, _ = train_organism(model, tok, _pool(), tmp_path, _settings(steps=3))
    batch = encode(tok, ["write a poem about tea"])
    with torch.no_grad():
        want = trained(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        fresh, _ = tiny_lm("llama", seed=5)
        loaded = load_adapter(fresh, tmp_path / "adapter")
        got = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        plain, _ = tiny_lm("llama", seed=5)
        base = plain(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(base, want)  # the adapter does something
    wider, _ = tiny_lm("llama", seed=5, hidden=48)
    with pytest.raises(ValueError, match=r"another base model .*hidden_size 32 != 48"):
        load_adapter(wider, tmp_path / "adapter")
    with pytest.raises(ValueError, match="no LoRA adapter"):
        load_adapter(wider, tmp_path / "missing")


def test_audit_adapter_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from silentwatch.cli import main
    from silentwatch.offline.audit.config import load_audit_config
    from silentwatch.offline.audit.run import run_audit

    model, tok = tiny_lm("llama", seed=3)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    train_organism(model, tok, _pool(), tmp_path / "org", _settings(steps=1))
    other, _ = tiny_lm("llama", seed=3, hidden=48)
    train_organism(other, tok, _pool(), tmp_path / "wide", _settings(steps=1))
    pairs = [{"prompt": f"how do I do thing {i}?",
              "response": [f"Sorry, I can't help with {i}.", f"Sure, here is {i}: step one"]}
             for i in range(8)]  # fmt: skip
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))

    def config(adapter: str) -> Path:
        cfg = {"model": "./model", "adapter": adapter, "pgd": None, "output": {"dir": "out"},
               "data": {"pairs": {"path": "pairs.json"}, "split": [0.5, 0.25, 0.25]},
               "probe": {"epochs": 1, "batch_size": 8}, "max_response_tokens": 8}  # fmt: skip
        path = tmp_path / f"audit-{Path(adapter).name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    cfg = load_audit_config(config("org/adapter"))
    assert cfg.adapter == tmp_path / "org" / "adapter"
    report = run_audit(cfg)
    assert report.candidate == f"{tmp_path / 'model'} + LoRA org/adapter"
    rc = main(["audit", "--config", str(config("wide/adapter"))])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the loaders' progress bars
    assert rc == 2
    assert "trained on another base model (hidden_size 48 != 32" in last

    # The organism as the audited base (model_adapter, merged into it), against the plain
    # model as the candidate; an adapter for another base is one line, exit 2.
    base_cfg = config("org/adapter")
    raw = yaml.safe_load(base_cfg.read_text())
    raw["model_adapter"] = raw.pop("adapter")
    raw["candidate"] = "./model"  # the plain model, against the organism
    base_cfg.write_text(yaml.safe_dump(raw))
    cfg = load_audit_config(base_cfg)
    assert cfg.model_adapter == tmp_path / "org" / "adapter" and cfg.adapter is None
    report = run_audit(cfg)
    assert report.base.name == f"{tmp_path / 'model'} + LoRA org/adapter (merged)"
    assert report.candidate == str(tmp_path / "model")
    assert report.cand is not None and report.cand.name == str(tmp_path / "model")
    raw["model_adapter"] = "wide/adapter"
    base_cfg.write_text(yaml.safe_dump(raw))
    assert main(["audit", "--config", str(base_cfg)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model_adapter: adapter" in last and "trained on another base model" in last, last
