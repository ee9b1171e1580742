"""One-block-per-stage twins of the models: each variant's widths, heads, reductions and attention kind, built
by its own class, with one block in each stage. Whether a model traces, exports or compiles does not depend on
how many blocks a stage repeats, and the twins take a fraction of the deep models' time."""

from torch import nn

from pvtv2.models.registry import _lookup


def one_block_per_stage(name: str, **kwargs) -> nn.Module:
    model_class, settings = _lookup(name)
    return model_class(**{**settings, "depths": (1, 1, 1, 1)}, **kwargs).eval()
