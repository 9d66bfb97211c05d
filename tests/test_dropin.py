"""Drop-in for torch.optim (issue #17, first part): torch's own keyword arguments and group keys are accepted,
torch's error words for a bad tensor lr or mixed betas, Adam's decoupled_weight_decay, and a torch checkpoint
loaded into a penalized optimizer keeps its penalties. Every test runs on each CPU backend (conftest)."""
import copy

import pytest
import torch

import fusedreg
from tolerances import TRAJECTORY, rel_err

TORCH = {"SGD": dict(lr=0.05, momentum=0.9), "Adam": dict(lr=0.01), "AdamW": dict(lr=0.01),
         "Adagrad": dict(lr=0.05)}
# Every class, for the checks that need no torch.optim run beside it (Lion's is lion-pytorch's: test_optim.py).
ALL = {**TORCH, "Lion": dict(lr=0.01)}


def model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()


def train(m, opt, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen, dtype=torch.float64)
        y = x[:, :1] - 2 * x[:, 1:2]
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", list(TORCH))
def test_torch_keywords_are_accepted_and_recorded(name, backend):
    keys = dict(foreach=False, fused=True, differentiable=False)
    if name.startswith("Adam"):
        keys["capturable"] = False
    opt = getattr(fusedreg, name)(model().parameters(), backend=backend, **TORCH[name], **keys)
    for group in opt.param_groups:
        assert {k: group[k] for k in keys} == keys
    ref = getattr(torch.optim, name)(model().parameters(), **TORCH[name])
    # Every group key torch keeps is one of ours too, so a group dict moves from torch's optimizer to ours.
    assert set(ref.param_groups[0]) <= set(opt.param_groups[0])


@pytest.mark.parametrize("name", list(ALL))
def test_differentiable_is_a_clear_error(name):
    with pytest.raises(ValueError, match="differentiable=True is not supported"):
        getattr(fusedreg, name)(model().parameters(), differentiable=True, **ALL[name])


@pytest.mark.parametrize("name", list(ALL))
def test_a_tensor_lr_of_two_elements_gets_torchs_error(name):
    with pytest.raises(ValueError, match="Tensor lr must be 1-element"):
        getattr(fusedreg, name)(model().parameters(), **{**ALL[name], "lr": torch.tensor([0.1, 0.2])})


def test_lion_takes_lion_pytorchs_arguments_by_position_and_torchs_keywords(backend):
    # lion-pytorch's order: lr, betas, weight_decay, use_triton, decoupled_weight_decay
    keys = dict(foreach=False, fused=True, differentiable=False)
    opt = fusedreg.Lion(model().parameters(), 0.002, (0.8, 0.9), 0.5, True, True, backend=backend, **keys)
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.002, (0.8, 0.9), 0.5)
    assert {k: group[k] for k in keys} == keys and group["l1_mode"] == "decoupled"
    # decoupled_weight_decay: the decay divided by the initial lr; a tensor lr steps as its value does
    a, b = model(), model()
    train(a, fusedreg.Lion(a.parameters(), torch.tensor(0.002, dtype=torch.float64), weight_decay=0.5,
                           decoupled_weight_decay=True, backend=backend), 5)
    train(b, fusedreg.Lion(b.parameters(), lr=0.002, weight_decay=0.5 / 0.002, backend=backend), 5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_mixed_float_and_tensor_betas_get_torchs_error(name):
    for betas in ((torch.tensor(0.9), 0.999), (0.9, torch.tensor(0.999))):
        with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
            getattr(fusedreg, name)(model().parameters(), lr=0.01, betas=betas)


def test_adam_decoupled_weight_decay_follows_torch(backend):
    ours, theirs = model(), model()
    opt = fusedreg.Adam(ours.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, backend=backend)
    ref = torch.optim.Adam(theirs.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)
    train(ours, opt, 20)
    train(theirs, ref, 20)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert rel_err(a, b) <= TRAJECTORY[torch.float64]
    # Without it, coupled decay: a different trajectory.
    coupled = model()
    train(coupled, fusedreg.Adam(coupled.parameters(), lr=0.01, weight_decay=0.1, backend=backend), 20)
    assert rel_err(coupled[0].weight, theirs[0].weight) > 1e-6


def test_a_torch_adamw_checkpoint_stays_decoupled_in_fusedreg_adam(backend):
    theirs = model()
    ref = torch.optim.AdamW(theirs.parameters(), lr=0.01, weight_decay=0.1)
    train(theirs, ref, 5)
    ours = copy.deepcopy(theirs)
    opt = fusedreg.Adam(ours.parameters(), lr=0.01, backend=backend)
    opt.load_state_dict(ref.state_dict())
    assert all(g["decoupled_weight_decay"] and g["weight_decay"] == 0.1 for g in opt.param_groups)
    train(theirs, ref, 10, seed=2)
    train(ours, opt, 10, seed=2)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert rel_err(a, b) <= TRAJECTORY[torch.float64]


def test_a_torch_adamw_checkpoint_keeps_our_l1_on_and_makes_exact_zeros(backend):
    theirs = model()
    ref = torch.optim.AdamW(theirs.parameters(), lr=0.01)
    train(theirs, ref, 5)
    ours = copy.deepcopy(theirs)
    opt = fusedreg.AdamW(fusedreg.param_groups(ours, l1=0.05), lr=0.01, backend=backend)
    saved = ref.state_dict()
    # torch's checkpoint has one group; give it the layout ours has (weights, then biases).
    weights = [i for i, (_, p) in enumerate(ours.named_parameters()) if p.dim() >= 2]
    biases = [i for i in range(len(saved["param_groups"][0]["params"])) if i not in weights]
    group = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    saved["param_groups"] = [dict(group, params=weights), dict(group, params=biases)]
    opt.load_state_dict(saved)
    assert [g["l1"] for g in opt.param_groups] == [0.05, 0.0]
    train(ours, opt, 30, seed=2)
    zeros = sum(int((p == 0).sum()) for p in (ours[0].weight, ours[2].weight))
    assert zeros > 0, "l1 was dropped on load: no exact zeros"


def test_a_torch_muon_checkpoint_keeps_our_penalties_and_continues_as_torch(backend):
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.Tanh(),
                                   torch.nn.Linear(16, 1, bias=False)).double()

    theirs = net()
    ref = torch.optim.Muon(theirs.parameters(), lr=0.02)
    train(theirs, ref, 5)
    plain, sparse = copy.deepcopy(theirs), copy.deepcopy(theirs)
    opts = [fusedreg.Muon(plain.parameters(), lr=0.02, backend=backend),
            fusedreg.Muon(sparse.parameters(), lr=0.02, l1=0.05, group_l1=0.05, backend=backend)]
    for opt in opts:
        opt.load_state_dict(ref.state_dict())
    assert opts[1].param_groups[0]["l1"] == 0.05 and opts[1].param_groups[0]["l1_mode"] == "decoupled"
    for m, opt in ((theirs, ref), (plain, opts[0]), (sparse, opts[1])):
        train(m, opt, 10, seed=2)
    for a, b in zip(plain.parameters(), theirs.parameters()):
        assert rel_err(a, b) <= TRAJECTORY[torch.float64]
    assert any((p == 0).any() for p in sparse.parameters()), "l1 was dropped on load: no exact zeros"
