"""The models the demo and the sweep train, which of their weights a penalty reaches, and what a trained one
pruned: the MLP (inputs -> hidden -> outputs, ReLU) and the sweep's nn.Linear, the param-group builders (the
weight matrices, or the first layer's columns for group lasso on the inputs), the penalty keys by name, and the
counts of pruned inputs and hidden neurons."""
import torch

from . import path
from .penalties import param_groups

PENALTY_LABELS = {"none": "none", "l2": "L2", "l1": "L1", "elastic_net": "elastic net",
                  "group_l1": "group lasso (layer-1 inputs)"}


def mlp(n_in=64, hidden=64, n_out=10):
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))


def mlp_factory(n_in, hidden):
    """The demo's model builder: a fresh MLP n_in -> hidden -> 10 per call."""
    return lambda: mlp(n_in, hidden)


def build_model(kind, *, n_in, hidden, n_out, dtype=torch.float32):
    """The sweep's models: "linear" (nn.Linear) or "mlp" (n_in -> hidden -> n_out, ReLU)."""
    if kind == "linear":
        return torch.nn.Linear(n_in, n_out).to(dtype)
    return mlp(n_in, hidden, n_out).to(dtype)


def model_fn(kind, *, n_in, hidden, n_out, dtype):
    """The sweep's model builder: a fresh `build_model` per call."""
    return lambda: build_model(kind, n_in=n_in, hidden=hidden, n_out=n_out, dtype=dtype)


def first_weight(model):
    return model.weight if isinstance(model, torch.nn.Linear) else model[0].weight


def first_layer_groups(model, **keys):
    """Param groups with the penalty keys on the first layer's weight only; every other param unpenalized."""
    first = model[0].weight
    return [dict(params=[first], **keys), dict(params=[p for p in model.parameters() if p is not first])]


def weight_groups(model, **keys):
    """fusedreg.param_groups: the penalty on the weight matrices, biases unpenalized."""
    return param_groups(model, **keys)


def groups_for(kind):
    """The demo's groups: group lasso on the first layer's columns (one group per input pixel), every other
    penalty on the weight matrices."""
    return first_layer_groups if kind == "group_l1" else weight_groups


def sweep_groups(kind, model_kind):
    """Group lasso: one group per input feature (first-layer columns, group_dim=1); other penalties: every
    weight matrix. Biases are never penalized."""
    if kind == "group_l1" and model_kind == "mlp":
        return first_layer_groups
    return weight_groups


def penalty_keys(kind, lam, l1_ratio=0.5):
    """The optimizer group keys of penalty `kind` at strength `lam` ("none": no keys); groups on columns."""
    if kind == "none":
        return {}
    return path.penalty_keys(kind, lam, l1_ratio=l1_ratio, group_dim=1)


def pruned(model):
    """(input features pruned, hidden neurons pruned). An input is pruned when its column of the first weight is
    all zero. A hidden neuron is pruned when its outgoing column of the second weight is all zero (it never
    reaches the output) or its incoming row is all zero (its output is the constant relu(bias), which folds
    into the next layer's bias)."""
    w1, w2 = model[0].weight, model[2].weight
    inputs = int((w1 == 0).all(0).sum())
    hidden = int(((w1 == 0).all(1) | (w2 == 0).all(0)).sum())
    return inputs, hidden
