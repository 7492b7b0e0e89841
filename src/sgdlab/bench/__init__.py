"""``sgdlab.bench``: measure optimizer steps against torch.optim, and the memory they need.

    from sgdlab import bench
    result = bench.run(["resnet50"], ["adamw"])   # a BenchResult
    bench.render(result)                          # rich tables
    open("bench.json", "w").write(result.to_json())

The command ``sgdlab bench`` wraps the same API.
"""

from sgdlab.bench.step import (
    CASES,
    CONTENDERS,
    OPTIMIZERS,
    QUICK_CASES,
    BenchResult,
    Row,
    copy_bandwidth,
    markdown,
    render,
    run,
)

__all__ = [
    "CASES", "CONTENDERS", "OPTIMIZERS", "QUICK_CASES", "BenchResult", "Row", "copy_bandwidth",
    "markdown", "render", "run",
]
