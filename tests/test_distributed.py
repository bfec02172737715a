"""`mmt_ard.runtime.distributed` in one process: launch detection, the process-group check, the setup string, and the
global-batch weighting (two ranks simulated by a fake `gather`). The real multi-process runs are in `test_ddp*.py`
and `test_fsdp.py`."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from mmt_ard import MMTARDConfig, make_weighting
from mmt_ard import distributed as dist_mod
from mmt_ard.runtime.distributed import GlobalBatchWeighting, check_one_process_group, distributed_setup


def test_cpu_multi_process_launch_needs_several_processes_and_no_device(monkeypatch):
    monkeypatch.setattr(dist_mod, "has_accelerator_device", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_mod.cpu_multi_process_launch()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not dist_mod.cpu_multi_process_launch()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist_mod, "has_accelerator_device", lambda: True)
    assert not dist_mod.cpu_multi_process_launch()


def test_config_trains_a_cpu_multi_process_launch_on_cpu(monkeypatch, tmp_path):
    """Without `use_cpu`, Accelerate would give each of the launched processes a run of its own."""
    import mmt_ard.training.config

    monkeypatch.setattr(mmt_ard.training.config, "cpu_multi_process_launch", lambda: True)
    args = MMTARDConfig(output_dir=str(tmp_path), report_to="none")
    assert args.use_cpu is True
    monkeypatch.setattr(mmt_ard.training.config, "cpu_multi_process_launch", lambda: False)
    assert MMTARDConfig(output_dir=str(tmp_path), report_to="none").use_cpu is False


def _accelerator(n: int, kind: DistributedType, fsdp_version: int | None = None):
    state = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version) if fsdp_version else None)
    return SimpleNamespace(num_processes=n, distributed_type=kind, state=state)


def test_separate_single_process_runs_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="2 processes were launched.*use_cpu=True"):
        check_one_process_group(_accelerator(1, DistributedType.NO))
    check_one_process_group(_accelerator(2, DistributedType.MULTI_CPU))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_one_process_group(_accelerator(1, DistributedType.NO))


def test_distributed_setup_in_words():
    assert distributed_setup(_accelerator(1, DistributedType.NO)) == "single process"
    assert distributed_setup(_accelerator(2, DistributedType.MULTI_CPU)) == "DDP, 2 processes"
    assert distributed_setup(_accelerator(8, DistributedType.MULTI_GPU)) == "DDP, 8 processes"
    assert distributed_setup(_accelerator(2, DistributedType.FSDP, fsdp_version=2)) == "FSDP2, 2 processes"
    assert distributed_setup(_accelerator(1, DistributedType.FSDP, fsdp_version=2)) == "FSDP2, 1 process"


class _TwoRankAccelerator:
    """Rank `process_index` of two; `gather`/`reduce` combine with the other rank's fixed tensors (rank order)."""

    def __init__(self, process_index: int, other_conf: torch.Tensor, other_losses: torch.Tensor):
        self.process_index = process_index
        self.other_conf, self.other_losses = other_conf, other_losses

    def gather(self, t):
        if t.dim() == 1:  # this rank's batch size
            other = torch.tensor([self.other_conf.shape[1]])
        else:  # (B_max, K) rows, padded
            other = t.new_zeros(t.shape)
            other[: self.other_conf.shape[1]] = self.other_conf.t()
        return torch.cat([t, other] if self.process_index == 0 else [other, t])

    def reduce(self, t, reduction="sum"):
        return t + self.other_losses


@pytest.mark.parametrize("name", ["sigmoid", "mtard"])
@pytest.mark.parametrize("split", [4, 3])  # equal halves, and 3 + 5 (a rank that dropped bad samples)
def test_global_batch_weighting_equals_one_process_on_the_global_batch(name, split):
    g = torch.Generator().manual_seed(0)
    coefs = torch.tensor([50.0, 5.0])
    steps = [(torch.rand(2, 8, generator=g), torch.rand(2, generator=g) + 0.5) for _ in range(4)]  # (K, 2B), (K,)
    single = make_weighting(name)
    ranks = [make_weighting(name), make_weighting(name)]
    for conf, losses in steps:
        halves, loss_halves = (conf[:, :split], conf[:, split:]), (losses * 0.25, losses * 0.75)  # each rank's share
        expected = single.weights(conf, coefs)
        columns = (slice(0, split), slice(split, 8))
        for r in (0, 1):
            acc = _TwoRankAccelerator(r, halves[1 - r], loss_halves[1 - r])
            wrapped = GlobalBatchWeighting(ranks[r], acc)
            torch.testing.assert_close(wrapped.weights(halves[r], coefs), expected[:, columns[r]])
        single.update(conf, losses)
        for r in (0, 1):
            GlobalBatchWeighting(ranks[r], _TwoRankAccelerator(r, halves[1 - r], loss_halves[1 - r])).update(
                halves[r], loss_halves[r]
            )
    assert ranks[0].state_dict() == ranks[1].state_dict()
    for key, value in single.state_dict().items():
        other = ranks[0].state_dict()[key]
        if isinstance(value, list):
            torch.testing.assert_close(torch.tensor(other), torch.tensor(value))
        else:
            assert other == value
    assert GlobalBatchWeighting(ranks[0], None).name == name  # the wrapper reads as the strategy it wraps


def test_scalar_parameters_are_left_out_of_sharding():
    from torch import nn

    from mmt_ard.embedded.tiny import build_tiny_clip
    from mmt_ard.runtime.distributed import ignore_scalar_parameters

    clip, _ = build_tiny_clip(hidden=32, seed=0)
    plugin = SimpleNamespace(ignored_modules=None)
    with pytest.raises(ValueError, match="logit_scale.*freeze them"):  # a trainable scalar would not be synchronised
        ignore_scalar_parameters(plugin, clip)
    clip.logit_scale.requires_grad_(False)
    assert ignore_scalar_parameters(plugin, clip) == ["logit_scale"]
    (holder,) = plugin.ignored_modules
    assert [p for p in holder.parameters()] == [clip.logit_scale]  # the parameter itself, its 0-d shape kept
    assert clip.logit_scale.dim() == 0

    user_module = nn.Linear(2, 2)
    plugin = SimpleNamespace(ignored_modules=[user_module])
    ignore_scalar_parameters(plugin, clip)
    assert plugin.ignored_modules[0] is user_module and len(plugin.ignored_modules) == 2
    with pytest.raises(TypeError, match="pattern"):
        ignore_scalar_parameters(SimpleNamespace(ignored_modules="vision_model.*"), clip)
    assert ignore_scalar_parameters(SimpleNamespace(ignored_modules=None), nn.Linear(2, 2)) == []
