"""Parameter lists shaped like real models, generated without the models' libraries.

An optimizer step only sees a list of tensors, so what matters for its speed is how many tensors
there are and how large they are; these lists reproduce that exactly for the models named.
"""

from __future__ import annotations

import importlib
from typing import Callable

Shape = tuple[int, ...]


def resnet50_shapes(num_classes: int = 1000) -> list[Shape]:
    """torchvision's ResNet-50 (He et al. 2016, bottleneck blocks [3, 4, 6, 3]): 161 tensors,
    25,557,032 parameters, in ``model.parameters()`` order."""
    shapes: list[Shape] = [(64, 3, 7, 7), (64,), (64,)]
    in_channels = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for block in range(blocks):
            out_channels = width * 4
            shapes += [(width, in_channels, 1, 1), (width,), (width,)]
            shapes += [(width, width, 3, 3), (width,), (width,)]
            shapes += [(out_channels, width, 1, 1), (out_channels,), (out_channels,)]
            if block == 0:
                shapes += [(out_channels, in_channels, 1, 1), (out_channels,), (out_channels,)]
            in_channels = out_channels
    shapes += [(num_classes, 2048), (num_classes,)]
    return shapes


def gpt2_small_shapes(
    vocab: int = 50257, context: int = 1024, width: int = 768, layers: int = 12
) -> list[Shape]:
    """GPT-2 small (Radford et al. 2019; HF ``GPT2Model`` layout, tied output embedding):
    148 tensors, 124,439,808 parameters."""
    shapes: list[Shape] = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,)]  # ln_1
        shapes += [(width, 3 * width), (3 * width,), (width, width), (width,)]  # attention
        shapes += [(width,), (width,)]  # ln_2
        shapes += [(width, 4 * width), (4 * width,), (4 * width, width), (width,)]  # MLP
    shapes += [(width,), (width,)]  # ln_f
    return shapes


def gpt2_small_hidden_shapes(width: int = 768, layers: int = 12) -> list[Shape]:
    """GPT-2 small's hidden weight matrices, Muon's parameters in the usual recipe (embeddings,
    biases and norms go to AdamW): 48 tensors of 4 shapes, 84,934,656 parameters."""
    return [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)] * layers


def uniform_shapes(count: int = 8, numel: int = 4 * 1024 * 1024) -> list[Shape]:
    """``count`` equal 1-d tensors (default 8 x 4M): the large-tensor, no-overhead case."""
    return [(numel,)] * count


def factory_shapes(spec: str) -> list[Shape]:
    """Shapes of the parameters of the model built by ``module:factory`` (called without
    arguments; it may return an ``nn.Module``, an iterable of tensors or of shapes)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"Invalid model factory: {spec!r} (expected 'module:factory')")
    try:
        factory: Callable = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Invalid model factory: {spec!r} ({error})") from None
    if not callable(factory):
        raise ValueError(f"Invalid model factory: {spec!r} is not callable")
    built = factory()
    items = built.parameters() if hasattr(built, "parameters") else built
    try:
        shapes = [tuple(int(n) for n in (item.shape if hasattr(item, "shape") else item)) for item in items]
    except (TypeError, ValueError):
        raise ValueError(
            f"Invalid model factory: {spec!r} returned {type(built).__name__}, not an nn.Module, tensors or shapes"
        ) from None
    if not shapes or any(n < 1 for shape in shapes for n in shape):
        raise ValueError(f"Invalid model factory: {spec!r} returned no parameters, or empty shapes")
    return shapes


def numel(shapes: list[Shape]) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for size in shape:
            n *= size
        total += n
    return total
