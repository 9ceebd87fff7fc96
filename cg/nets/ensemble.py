"""Ensembles of independently trained CG feature networks, merged into one exact network (float32).

Force matching with one network gives a free-energy surface that moves with the training seed (weight
initialisation, batch order, early-stopping epoch). Averaging K members trained from different seeds keeps
what they agree on and shrinks the seed-to-seed part (about 1/K in variance), at K times the training cost.

Members that are :class:`~cg.potential.FeatureNet` MLPs over the same features are merged exactly into one
wider FeatureNet: the first layers stacked, the hidden layers block-diagonal, the output weights divided by
K. Its energy is the members' mean for every input, so the merged model saves, loads and runs (analytic
forces, the fused MD path) like any feature network; forces stay −∇E.
"""
from __future__ import annotations

import torch
from torch import nn


def merge_feature_nets(members: list[nn.Module]) -> nn.Module:
    """One :class:`~cg.potential.FeatureNet` whose energy is the mean of ``members``' energies.

    The members must share beads, bonds, layer count, torsion form and feature scaling (built from the same
    reference frames); a single member is returned as it is.
    """
    from ..potential import FeatureNet

    if not members:
        raise ValueError("an ensemble needs at least one member network")
    if any(type(m) is not FeatureNet for m in members):
        raise ValueError("only FeatureNet members can be merged (network = 'features')")
    first = members[0]
    if len(members) == 1:
        return first
    c = first.config
    for k, m in enumerate(members[1:], 1):
        same = {key: m.config[key] == c[key] for key in ("n_beads", "bonds", "layers", "torsions", "hidden")}
        if not all(same.values()):
            raise ValueError(f"member {k} differs from member 0 in {[key for key, v in same.items() if not v]}")
        if not (torch.equal(m.mean, first.mean) and torch.equal(m.std, first.std)):
            raise ValueError(f"member {k} has another feature scaling than member 0 (other reference frames)")
    K, h = len(members), c["hidden"]
    merged = FeatureNet(c["n_beads"], torch.as_tensor(c["bonds"]).numpy(), hidden=K * h, layers=c["layers"],
                        torsions=c["torsions"]).to(first.mean.device)
    lin = [[mod for mod in m.mlp if isinstance(mod, nn.Linear)] for m in members]
    out = [mod for mod in merged.mlp if isinstance(mod, nn.Linear)]
    with torch.no_grad():
        merged.mean.copy_(first.mean)
        merged.std.copy_(first.std)
        for i, layer in enumerate(out):
            layer.weight.zero_()
            parts = [ls[i] for ls in lin]
            if i == 0:  # every member reads all features
                layer.weight.copy_(torch.cat([p.weight for p in parts]))
                layer.bias.copy_(torch.cat([p.bias for p in parts]))
            elif i < len(out) - 1:  # member k's hidden units only see member k's
                for k, p in enumerate(parts):
                    layer.weight[k * h:(k + 1) * h, k * h:(k + 1) * h] = p.weight
                layer.bias.copy_(torch.cat([p.bias for p in parts]))
            else:  # the mean of the members' outputs
                layer.weight.copy_(torch.cat([p.weight for p in parts], 1) / K)
                layer.bias.copy_(torch.stack([p.bias for p in parts]).mean(0))
    return merged
