"""The paper's small-lenet in PyTorch, as a gradsweep trainer
(``python:lenet:train``): SGD on MNIST, per-sample gradients by torch.func
(``vmap(grad(...))``) in eval mode, streamed into gradsweep's sketch block by
block. Uses CUDA when present.

The architecture is gradsweep's own ``small-lenet`` (d = 13,338): conv5×5(8)
+BN+ReLU+maxpool3 → conv5×5(16)+BN+ReLU+maxpool2 → FC 64→128+BN+ReLU → FC
128→10, dropout 0.1. MNIST comes from ``GRADSWEEP_DATA_DIR`` (default
``data``) as ``deploy/fetch-data.sh mnist`` leaves it.
"""

from __future__ import annotations

import gzip
import io
import os

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import gradsweep


def idx(path: str) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    for p in (path, path + ".gz"):
        if os.path.exists(p):
            raw = gzip.open(p).read() if p.endswith(".gz") else open(p, "rb").read()
            dims = raw[3]
            shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
            return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    raise FileNotFoundError(f"{path}[.gz]: fetch MNIST with deploy/fetch-data.sh mnist DATA_DIR")


def mnist(data_dir: str, train_samples: int) -> tuple[torch.Tensor, ...]:
    d = os.path.join(data_dir, "mnist")
    x = idx(os.path.join(d, "train-images-idx3-ubyte"))[:train_samples]
    y = idx(os.path.join(d, "train-labels-idx1-ubyte"))[:train_samples]
    xt, yt = idx(os.path.join(d, "t10k-images-idx3-ubyte")), idx(os.path.join(d, "t10k-labels-idx1-ubyte"))
    f = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 255.0  # noqa: E731
    return f(x), torch.tensor(y, dtype=torch.long), f(xt), torch.tensor(yt, dtype=torch.long)


def small_lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 5), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 3), nn.Dropout(0.1),
        nn.Conv2d(8, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Dropout(0.1),
        nn.Flatten(), nn.Linear(64, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 10),
    )  # fmt: skip


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def per_sample_blocks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, block: int):
    """Per-sample gradients (eval mode), ``block`` samples at a time, as (rows, d) arrays."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    model.eval()
    for s in range(0, len(y), block):
        g = per_sample(params, x[s : s + block], y[s : s + block])
        yield torch.cat([g[k].reshape(g[k].shape[0], -1) for k, _ in model.named_parameters()], dim=1).cpu()


def train(run: gradsweep.Run) -> None:
    p = run.params
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(run.seed)
    x, y, xt, yt = (t.to(dev) for t in mnist(os.environ.get("GRADSWEEP_DATA_DIR", "data"), int(p["train_samples"])))
    model = small_lenet().to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=float(p["lr"]), momentum=float(p["momentum"]))
    state = run.resume_state()
    if state is not None:
        saved = torch.load(io.BytesIO(state), map_location=dev)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
    b = int(p["batch_size"])
    d = sum(q.numel() for q in model.parameters())
    for epoch in range(run.epoch, run.epochs):
        model.train()
        torch.manual_seed(run.seed * 100_003 + epoch)  # dropout masks and order: a function of (seed, epoch)
        order = torch.randperm(len(y), device=dev)
        for s in range(len(y) // b):
            i = order[s * b : (s + 1) * b]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            loss.backward()
            opt.step()
            run.progress(run.step + 1, loss.item())
            run.trajectory(flat(model))
        model.eval()
        with torch.no_grad():
            test_acc = (model(xt).argmax(1) == yt).float().mean().item()
        run.epoch_end(test_accuracy=test_acc)
        if run.probe_due:
            run.probe(lambda: per_sample_blocks(model, x, y, 256), n=len(y), d=d)
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
        run.checkpoint(buf.getvalue())
