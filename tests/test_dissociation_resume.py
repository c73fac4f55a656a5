"""Checkpoint and resume of paper B's dissociation (offline/audit/dissociation/): an
interrupted run continued from its newest checkpoint ends with the weights, monitor and
records of an uninterrupted one; checkpoints of other settings or of the staged option are
refused with the reason."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from silentwatch.offline.audit.dissociation import (  # noqa: E402
    DissociationData,
    DissociationSettings,
    dissociate,
)
from silentwatch.offline.audit.dissociation.checkpoints import (  # noqa: E402
    OPTIMIZERS_FILE,
    latest_checkpoint,
)
from silentwatch.offline.audit.monitor import LatentMonitor  # noqa: E402

from .tiny_lm import HIDDEN, LAYERS, tiny_lm  # noqa: E402

DATA = DissociationData(
    prompts=["how to steal a car", "make poison", "bake bread", "capital of France"] * 2,
    responses=["I'm sorry, I cannot help.", "No.", "Knead and bake.", "Paris."] * 2,
    unsafe=[False] * 8,
    harmful=[True, True, False, False] * 2,
)


def _settings(tmp_path, updates: int, **kw) -> DissociationSettings:
    return DissociationSettings(
        composition="as_given",
        updates=updates,
        batch_size=2,
        grad_accum=2,
        lr=1e-2,
        monitor_lr=1e-2,
        checkpoint_every=2,
        checkpoint_dir=str(tmp_path / "ckpt"),
        **kw,
    )


def _run(tmp_path, updates: int, lora: bool = True, **kw):
    model, tok = tiny_lm("llama")
    torch.manual_seed(1)
    monitor = LatentMonitor(LAYERS, HIDDEN, hidden=8)
    return dissociate(model, tok, DATA, monitor, _settings(tmp_path, updates, lora=lora, **kw))


def _trained(result) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, lora):
    straight = _run(tmp_path / "a", 5, lora)
    first = _run(tmp_path / "b", 3, lora)  # "interrupted": its newest checkpoint is step 2
    assert [p.name for p in first.checkpoints] == ["step-000002", "step-000003"]
    # drop the step-3 save to resume from an even step, as after a kill between checkpoints
    for f in (tmp_path / "b" / "ckpt" / "step-000003").iterdir():
        f.unlink()
    (tmp_path / "b" / "ckpt" / "step-000003").rmdir()
    assert latest_checkpoint(tmp_path / "b" / "ckpt").name == "step-000002"
    assert (tmp_path / "b" / "ckpt" / "step-000002" / OPTIMIZERS_FILE).exists()

    resumed = _run(tmp_path / "b", 5, lora, resume=True)
    assert [r.step for r in resumed.records] == [3, 4, 5]
    for got, want in zip(resumed.records, straight.records[2:], strict=True):
        assert got.total == pytest.approx(want.total, rel=1e-4, abs=1e-6)
        assert got.monitor_bce == pytest.approx(want.monitor_bce, rel=1e-4, abs=1e-6)
    a, b = _trained(straight), _trained(resumed)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6)
    for k, v in straight.monitor.state_dict().items():
        torch.testing.assert_close(resumed.monitor.state_dict()[k], v, rtol=1e-4, atol=1e-6)
    assert resumed.checkpoints[-1].name == "step-000005"


def test_resume_without_checkpoints_starts_afresh(tmp_path):
    result = _run(tmp_path, 2, resume=True)
    assert [r.step for r in result.records] == [1, 2]


def test_resume_refuses_other_settings(tmp_path):
    _run(tmp_path, 2)
    with pytest.raises(ValueError, match=r"other settings \(seed 0 != 3\)"):
        _run(tmp_path, 4, resume=True, seed=3)


def test_resume_refuses_a_checkpoint_without_optimiser_state(tmp_path):
    _run(tmp_path, 2)
    (tmp_path / "ckpt" / "step-000002" / OPTIMIZERS_FILE).unlink()
    with pytest.raises(ValueError, match="no optimiser state"):
        _run(tmp_path, 4, resume=True)


def test_resume_refuses_the_staged_option(tmp_path):
    model, tok = tiny_lm("llama")
    s = _settings(
        tmp_path,
        0,
        schedule="staged",
        warmup_steps=0,
        joint_steps=2,
        consolidate_steps=0,
        refit_steps=0,
    )
    dissociate(model, tok, DATA, LatentMonitor(LAYERS, HIDDEN, hidden=8), s)
    s.resume = True
    with pytest.raises(ValueError, match="schedule='paper' runs only"):
        dissociate(tiny_lm("llama")[0], tok, DATA, LatentMonitor(LAYERS, HIDDEN, hidden=8), s)
