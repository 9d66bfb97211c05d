"""Sparse gradients (issue #17, item 2): SGD and Adagrad step torch.sparse_coo grads (nn.Embedding(sparse=True))
as torch.optim does with every penalty at 0; with penalties they apply lazily, to the rows the grad holds only
(duplicates summed first), as TensorFlow's sparse proximal updates do; Adam/AdamW refuse them with torch's error.
Ftrl (issue #18) steps them as TensorFlow's sparse FTRL apply: only the rows present and their state change.
Every test runs on each CPU backend (conftest); the kernels themselves are compared with the reference, rows
and all, in tests/test_kernels.py."""
import pytest
import torch

import fusedreg
from fusedreg import functional
from cases import assert_unchanged, snapshot
from tolerances import TRAJECTORY, rel_err

# (class name, torch.optim keyword arguments): torch.optim's sparse semantics, penalties at 0.
CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("SGD", dict(lr=0.05, momentum=0.5, dampening=0.3)),
    ("Adagrad", dict(lr=0.1)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-6)),
    ("Adagrad", dict(lr=0.1, maximize=True)),
]


def ids(c):
    return c[0] + "-" + "-".join(f"{k}={v}" for k, v in c[1].items())


def embeddings(dtype, n=50, dim=8, seed=0):
    torch.manual_seed(seed)
    ours = torch.nn.Embedding(n, dim, sparse=True).to(dtype)
    theirs = torch.nn.Embedding(n, dim, sparse=True).to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def batches(steps, n=50, size=12, seed=1):
    # Duplicate indices in every batch (nn.Embedding's grad then holds repeated rows, uncoalesced).
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n, (size,), generator=gen)
        yield torch.cat([idx, idx[:3]]), torch.randn(size + 3, generator=gen)


def loss(emb, idx, w):
    out = emb(idx)
    return ((out.sum(1) - w.to(out.dtype)) ** 2).sum() + (out ** 3).sum() * 0.01


def train(pairs, steps):
    """`steps` steps of every (embedding, optimizer) pair on the same batches, each grad sparse."""
    for idx, w in batches(steps):
        for emb, o in pairs:
            o.zero_grad()
            loss(emb, idx, w).backward()
            assert emb.weight.grad.is_sparse
            o.step()


def dense(t):
    return t.to_dense() if t.is_sparse else t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=ids)
def test_embedding_matches_torch(config, dtype, backend):
    name, kw = config
    ours, theirs = embeddings(dtype)
    opt = getattr(fusedreg, name)(ours.parameters(), backend=backend, **kw)
    ref = getattr(torch.optim, name)(theirs.parameters(), foreach=False, **kw)
    train(((ours, opt), (theirs, ref)), steps=12)
    assert rel_err(ours.weight.detach(), theirs.weight.detach()) <= TRAJECTORY[dtype]
    mine, want = opt.state[ours.weight], ref.state[theirs.weight]
    assert set(mine) == set(want)
    for key in want:
        assert rel_err(dense(mine[key]), dense(want[key])) <= TRAJECTORY[dtype], key


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_sparse_grads_of_any_sparse_dim_match_torch(name, backend):
    # torch's optimizer tests set p.grad = p.grad.to_sparse(): a 1-D param (sparse_dim 1) and here also a 2-D one
    # (sparse_dim 2: single elements), next to a dense param in the same group.
    torch.manual_seed(0)
    ps = [torch.randn(7, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64),
          torch.randn(3, dtype=torch.float64)]
    qs = [p.clone().requires_grad_() for p in ps]
    ps = [p.requires_grad_() for p in ps]
    opt = getattr(fusedreg, name)(ps, lr=0.05, backend=backend)
    ref = getattr(torch.optim, name)(qs, lr=0.05, foreach=False)
    for step in range(8):
        for params, o in ((ps, opt), (qs, ref)):
            o.zero_grad()
            sum(((p - 0.3 * step) ** 2 * torch.arange(p.numel()).view(p.shape)).sum() for p in params).backward()
            params[0].grad = params[0].grad.to_sparse()
            params[1].grad = params[1].grad.to_sparse()
            o.step()
    for p, q in zip(ps, qs):
        assert rel_err(p.detach(), q.detach()) <= TRAJECTORY[torch.float64]


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Ftrl"])
def test_several_sparse_dims_on_a_transposed_param_are_refused_before_the_step(name, backend):
    # The kernels step the sparse dims flattened into rows (a view): a transposed param has no such view, so the
    # step must refuse it before it changes the group's other param (listed first) or any state, on the first
    # step (no state yet) and on a later one.
    torch.manual_seed(0)
    first = torch.randn(5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64).t().requires_grad_()
    opt = getattr(fusedreg, name)([first, t], lr=0.1, backend=backend)

    def grads(sparse_dims):
        opt.zero_grad()
        (first.sum() + (t * t).sum()).backward()
        first.grad = first.grad.to_sparse()
        t.grad = t.grad.to_sparse(sparse_dims)

    for _ in range(2):
        grads(2)
        snap = snapshot([first, t], opt)
        with pytest.raises(RuntimeError, match=r"params\[1\].*2 sparse dims.*contiguous"):
            opt.step()
        assert_unchanged([first, t], opt, snap)
        grads(1)  # one sparse dim: rows of the transposed param, which steps
        opt.step()


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_mixed_dense_and_sparse_params_in_one_group(name, backend):
    def net():
        torch.manual_seed(3)
        return torch.nn.ModuleDict(dict(emb=torch.nn.Embedding(30, 4, sparse=True),
                                        lin=torch.nn.Linear(4, 1))).double()

    ours, theirs = net(), net()
    kw = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)
    opt = getattr(fusedreg, name)(ours.parameters(), backend=backend, **kw)
    ref = getattr(torch.optim, name)(theirs.parameters(), foreach=False, **kw)
    for idx, w in batches(10, n=30):
        for m, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            ((m["lin"](m["emb"](idx)).squeeze(1) - w.double()) ** 2).sum().backward()
            o.step()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert rel_err(a.detach(), b.detach()) <= TRAJECTORY[torch.float64]


def test_ftrl_steps_a_group_of_dense_and_sparse_params_as_each_alone(backend):
    # torch has no Ftrl: the mixed group must step each param as an optimizer holding only that param does.
    def net():
        torch.manual_seed(3)
        return torch.nn.ModuleDict(dict(emb=torch.nn.Embedding(30, 4, sparse=True),
                                        lin=torch.nn.Linear(4, 1))).double()

    kw = dict(lr=0.05, l1=0.01, l2=0.1, l2_shrinkage=0.02, beta=0.3, backend=backend)
    mixed, alone = net(), net()
    opts = [fusedreg.Ftrl(mixed.parameters(), **kw)] + [fusedreg.Ftrl([p], **kw) for p in alone.parameters()]
    for idx, w in batches(10, n=30):
        for m, os_ in ((mixed, opts[:1]), (alone, opts[1:])):
            for o in os_:
                o.zero_grad()
            ((m["lin"](m["emb"](idx)).squeeze(1) - w.double()) ** 2).sum().backward()
            assert m["emb"].weight.grad.is_sparse and not m["lin"].weight.grad.is_sparse
            for o in os_:
                o.step()
    assert bool((mixed["emb"].weight == 0).any())  # l1 made exact zeros on the rows used
    for a, b in zip(mixed.parameters(), alone.parameters()):
        assert torch.equal(a, b)


# ---- penalties: lazily, on the rows the grad holds -------------------------------------------------------------

PENALIZED = [
    ("SGD", dict(lr=0.1, l1=0.3)),
    ("SGD", dict(lr=0.1, l1=0.1, l0=0.05, nonneg=True)),
    ("SGD", dict(lr=0.1, l1=0.2, l1_mode="subgradient")),
    ("Adagrad", dict(lr=0.3, l1=0.3)),
    ("Adagrad", dict(lr=0.3, l1=0.1, l2=0.5, eps=0.0, initial_accumulator_value=0.1)),
    ("SGD", dict(lr=0.1, l1=0.3, l1_mode="decoupled")),
    ("Adagrad", dict(lr=0.3, lr_decay=0.05, l1=1.0, l2=0.5, l0=1e-3, l1_mode="decoupled")),
    # Ftrl: a dense step with a zero grad would still move every row (w is recomputed from z and n; l2_shrinkage
    # moves z): the sparse one leaves absent rows and their state as they are (TensorFlow's sparse apply).
    ("Ftrl", dict(lr=0.1, l1=0.5)),
    ("Ftrl", dict(lr=0.2, lr_power=-0.7, beta=0.5, l1=0.3, l2=0.1, l2_shrinkage=0.05, l0=1e-3, nonneg=True)),
    ("Ftrl", dict(lr=0.1, lr_power=0.0, l1=0.1, l1_mode="subgradient", maximize=True)),
]
# The per-row state of each class (what a sparse step may change on the present rows only), and its value before
# the first step (Ftrl makes its state on the first step, Adagrad at construction).
ROW_STATE = {"SGD": {}, "Adagrad": {"sum": 0.0}, "Ftrl": {"accumulator": 0.1, "linear": 0.0}}


@pytest.mark.parametrize("config", PENALIZED, ids=ids)
def test_penalties_touch_only_the_rows_present(config, backend):
    name, kw = config
    torch.manual_seed(0)
    w = torch.randn(40, 6).requires_grad_()
    opt = getattr(fusedreg, name)([w], backend=backend, **kw)
    keys = ROW_STATE[name]
    zeros = 0
    for step, (idx, target) in enumerate(batches(6, n=40, size=5)):
        before = w.detach().clone()
        state_before = {k: opt.state[w][k].clone() if k in opt.state[w] else torch.full_like(before, init)
                        for k, init in keys.items()}
        opt.zero_grad()
        (torch.nn.functional.embedding(idx, w, sparse=True).sum(1) - target).pow(2).sum().backward()
        assert not w.grad.is_coalesced()  # repeated ids: summed by the step
        present = torch.zeros(40, dtype=torch.bool)
        present[idx] = True
        # The same step, dense, on a param made of the present rows only, with the summed (coalesced) grad values.
        g = w.grad.coalesce()
        sub = before[g.indices()[0]].clone().requires_grad_()
        sub.grad = g.values().clone()
        sub_opt = getattr(fusedreg, name)([sub], backend=backend, **kw)
        if keys and step:
            for k in keys:
                sub_opt.state[sub][k] = state_before[k][g.indices()[0]].clone()
            if "step" in opt.state[w]:
                sub_opt.state[sub]["step"] = opt.state[w]["step"].clone()
        opt.step()
        sub_opt.step()
        assert torch.equal(w.detach()[~present], before[~present]), "an absent row moved"
        for k in keys:
            assert torch.equal(opt.state[w][k][~present], state_before[k][~present]), f"absent rows' {k} moved"
            assert torch.equal(opt.state[w][k][present], sub_opt.state[sub][k]), k
        assert torch.equal(w.detach()[present], sub.detach())
        zeros += int((w.detach()[present] == 0).sum())
    assert zeros > 0 or kw.get("l1_mode") == "subgradient", "the prox never gave an exact zero"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("init", [0.1, 0.0])
def test_sparse_ftrl_steps_like_torchs_sparse_adagrad_from_zero(dtype, init, backend):
    # The known equivalence (lr_power=-0.5, no penalties, w = 0 at the start: torch.optim.Adagrad with eps=0),
    # through nn.Embedding(sparse=True) (repeated ids) and torch's own sparse Adagrad step, which also touches
    # the rows present only.
    ours, theirs = embeddings(dtype)
    for emb in (ours, theirs):
        torch.nn.init.zeros_(emb.weight)
    opt = fusedreg.Ftrl(ours.parameters(), lr=0.1, lr_power=-0.5, initial_accumulator_value=init, backend=backend)
    ref = torch.optim.Adagrad(theirs.parameters(), lr=0.1, initial_accumulator_value=init, eps=0, foreach=False)
    train(((ours, opt), (theirs, ref)), steps=12)
    assert rel_err(ours.weight.detach(), theirs.weight.detach()) <= TRAJECTORY[dtype]
    assert rel_err(opt.state[ours.weight]["accumulator"], ref.state[theirs.weight]["sum"]) <= TRAJECTORY[dtype]


def test_sgd_with_momentum_and_a_sparse_grad_is_the_dense_step(backend):
    # torch's sparse momentum buffer moves every row it has held: the step is the dense one (penalties on every
    # row), on the densified grad.
    torch.manual_seed(0)
    a = torch.randn(20, 3).requires_grad_()
    b = a.detach().clone().requires_grad_()
    oa = fusedreg.SGD([a], lr=0.1, momentum=0.9, l1=0.05, backend=backend)
    ob = fusedreg.SGD([b], lr=0.1, momentum=0.9, l1=0.05, backend=backend)
    for idx, target in batches(4, n=20, size=4):
        for p, o, sparse in ((a, oa, True), (b, ob, False)):
            o.zero_grad()
            (torch.nn.functional.embedding(idx, p, sparse=sparse).sum(1) - target).pow(2).sum().backward()
            o.step()
        assert torch.equal(a, b)


@pytest.mark.parametrize("op", ["sgd", "adagrad", "ftrl"])
@pytest.mark.parametrize("idx", [[4, 1, 4, 7, 1, 4], [4, 1, 9, 7, 0, 2]], ids=["repeated", "distinct"])
def test_uncoalesced_grads_step_as_coalesced_ones(op, idx, backend):
    # functional with an uncoalesced grad (repeated indices summed first; distinct ones in any order) ==
    # functional with the same grad coalesced, bit for bit.
    torch.manual_seed(0)
    p = torch.randn(10, 3)
    idx = torch.tensor([idx])
    vals = torch.randn(6, 3)
    grads = [torch.sparse_coo_tensor(idx, vals, (10, 3)), torch.sparse_coo_tensor(idx, vals, (10, 3)).coalesce()]
    outs = []
    for g in grads:
        q = p.clone()
        if op == "sgd":
            functional.sgd([q], [g], [], lr=0.1, l1=0.05, backend=backend)
            outs.append((q,))
        elif op == "adagrad":
            s, t = torch.full_like(q, 0.1), torch.zeros(())
            functional.adagrad([q], [g], [s], [t], lr=0.1, l1=0.05, backend=backend)
            outs.append((q, s, t))
        else:
            n, z = torch.full_like(q, 0.1), torch.zeros_like(q)
            functional.ftrl([q], [g], [n], [z], lr=0.1, l1=0.05, l2_shrinkage=0.1, backend=backend)
            outs.append((q, n, z))
    for x, y in zip(*outs):
        assert torch.equal(x, y)
    assert not grads[0].is_coalesced()


# ---- errors ----------------------------------------------------------------------------------------------------

def torch_error(cls, **kw):
    emb = torch.nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 1])).sum().backward()
    with pytest.raises(Exception) as info:
        cls(emb.parameters(), **kw).step()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("name,kw,ours", [
    ("Adam", dict(lr=0.1), {}),
    ("AdamW", dict(lr=0.1), {}),
    ("Adagrad", dict(lr=0.1, weight_decay=0.1), {}),
    ("SGD", dict(lr=0.1, weight_decay=0.1), {}),
    ("SGD", dict(lr=0.1), dict(group_l1=0.1)),
    ("Adagrad", dict(lr=0.1), dict(group_l1=0.1)),
    ("Ftrl", dict(lr=0.1), dict(group_l1=0.1)),
])
def test_refused_as_torch_refuses_and_nothing_changes(name, kw, ours, backend):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 1, 3])).sum().backward()
    before = emb.weight.detach().clone()
    opt = getattr(fusedreg, name)(emb.parameters(), backend=backend, **kw, **ours)
    state = {k: v.clone() for k, v in opt.state[emb.weight].items()}
    with pytest.raises(RuntimeError) as info:
        opt.step()
    assert torch.equal(emb.weight.detach(), before)
    assert set(opt.state[emb.weight]) == set(state)
    for k, v in state.items():
        assert torch.equal(opt.state[emb.weight][k], v), k
    if ours:
        assert "group lasso" in str(info.value)
    elif name != "SGD":  # torch's own words (SGD's is an accident of its g + wd*p: ours names the cause)
        assert torch_error(getattr(torch.optim, name), **kw) == (RuntimeError, str(info.value))
    else:
        assert torch_error(torch.optim.SGD, **kw)[0] is RuntimeError
        assert "weight_decay" in str(info.value)


@pytest.mark.parametrize("native", [True, False], ids=["distinct_rows", "sort"])
def test_coalescing_paths_agree_with_coalesce(native, monkeypatch):
    # functional._coalesced: distinct indices as they are (vouched by fusedreg._C.distinct_rows), or sorted and
    # gathered (without the extension, or on CUDA); repeated ones through coalesce(). Same rows, same values.
    if not native:
        monkeypatch.setattr(fusedreg.backends, "distinct_rows", lambda: None)
    elif fusedreg.backends.distinct_rows() is None:
        pytest.skip("no fusedreg._C")
    gen = torch.Generator().manual_seed(0)
    for idx in ([5, 0, 9, 3], [5, 0, 5, 3], []):
        g = torch.sparse_coo_tensor(torch.tensor([idx], dtype=torch.int64).view(1, -1), torch.randn(len(idx), 2,
                                                                                                  generator=gen),
                                    (10, 2))
        ix, vals = functional._coalesced(g)
        want = g.coalesce()
        order = ix[0].argsort()
        assert torch.equal(ix[0][order], want.indices()[0])
        assert torch.equal(vals[order], want.values())


def test_sgd_momentum_checkpoints_move_both_ways(backend):
    # torch.optim.SGD's momentum buffer after sparse grads is a sparse tensor; ours is dense. Each loads the
    # other's state_dict and goes on along the same trajectory.
    ours, theirs = embeddings(torch.float64)
    kw = dict(lr=0.05, momentum=0.9)
    opt = fusedreg.SGD(ours.parameters(), backend=backend, **kw)
    ref = torch.optim.SGD(theirs.parameters(), foreach=False, **kw)
    steps = list(batches(8))

    def train(emb, o, part):
        for idx, w in part:
            o.zero_grad()
            loss(emb, idx, w).backward()
            o.step()

    train(ours, opt, steps[:4])
    train(theirs, ref, steps[:4])
    assert ref.state[theirs.weight]["momentum_buffer"].is_sparse
    swapped_ours = fusedreg.SGD(ours.parameters(), backend=backend, **kw)
    swapped_ours.load_state_dict(ref.state_dict())
    swapped_theirs = torch.optim.SGD(theirs.parameters(), foreach=False, **kw)
    swapped_theirs.load_state_dict(opt.state_dict())
    assert not swapped_ours.state[ours.weight]["momentum_buffer"].is_sparse
    train(ours, swapped_ours, steps[4:])
    train(theirs, swapped_theirs, steps[4:])
    assert rel_err(ours.weight.detach(), theirs.weight.detach()) <= TRAJECTORY[torch.float64]
