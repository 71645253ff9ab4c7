"""A small NumPy MLP trained by SGD, with hand-written per-sample gradients:
a gradsweep trainer (``python:mlp:train``) that needs no deep-learning
framework.

The data is synthetic and seeded (a random teacher network labels Gaussian
inputs), the weights start from the run's seed, and each epoch's batch
order comes from (seed, epoch): the run is a pure function of its spec, so a
run resumed from a checkpoint ends bit-identical to one that never stopped.
"""

from __future__ import annotations

import io

import numpy as np

import gradsweep

INPUTS, CLASSES = 16, 4


def data(samples: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` inputs and their teacher labels (the same for every run)."""
    rng = np.random.default_rng([split_seed, 7])
    x = rng.standard_normal((samples, INPUTS))
    w1, w2 = rng.standard_normal((INPUTS, 24)), rng.standard_normal((24, CLASSES))
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    return x, y


class Mlp:
    """tanh(x W1 + b1) W2 + b2 with softmax cross-entropy, in float64."""

    def __init__(self, hidden: int, seed: int) -> None:
        rng = np.random.default_rng([seed, 1])
        self.w1 = rng.standard_normal((INPUTS, hidden)) / np.sqrt(INPUTS)
        self.b1 = np.zeros(hidden)
        self.w2 = rng.standard_normal((hidden, CLASSES)) / np.sqrt(hidden)
        self.b2 = np.zeros(CLASSES)

    def arrays(self) -> list[np.ndarray]:
        return [self.w1, self.b1, self.w2, self.b2]

    def flat(self) -> np.ndarray:
        return np.concatenate([a.reshape(-1) for a in self.arrays()])

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.tanh(x @ self.w1 + self.b1)
        z = h @ self.w2 + self.b2
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return h, p / p.sum(axis=1, keepdims=True)

    def per_sample(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample losses (n,) and gradients (n, d), in the order of flat()."""
        h, p = self.forward(x)
        n = len(y)
        loss = -np.log(p[np.arange(n), y])
        dz = p.copy()
        dz[np.arange(n), y] -= 1.0
        dh = (dz @ self.w2.T) * (1.0 - h * h)
        g = [
            np.einsum("ni,nj->nij", x, dh).reshape(n, -1),
            dh,
            np.einsum("ni,nj->nij", h, dz).reshape(n, -1),
            dz,
        ]
        return loss, np.concatenate(g, axis=1)

    def step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        loss, g = self.per_sample(x, y)
        mean = g.mean(axis=0)
        at = 0
        for a in self.arrays():
            a -= lr * mean[at : at + a.size].reshape(a.shape)
            at += a.size
        return float(loss.mean())

    def save(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, *self.arrays())
        return buf.getvalue()

    def load(self, state: bytes) -> None:
        with np.load(io.BytesIO(state)) as z:
            self.w1, self.b1, self.w2, self.b2 = (z[f"arr_{i}"].copy() for i in range(4))


def train(run: gradsweep.Run) -> None:
    """Trains one run of the sweep (the grid's ``[user]`` keys: hidden, samples)."""
    p = run.params
    x, y = data(int(p.get("samples", 512)), int(p["split_seed"]))
    n_test = int(round(len(y) * float(p["test_fraction"])))
    (xt, yt), (x, y) = (x[:n_test], y[:n_test]), (x[n_test:], y[n_test:])
    model = Mlp(int(p.get("hidden", 32)), run.seed)
    state = run.resume_state()
    if state is not None:
        model.load(state)
    b, lr = int(p["batch_size"]), float(p["lr"])
    for epoch in range(run.epoch, run.epochs):
        order = np.random.default_rng([run.seed, epoch, 2]).permutation(len(y))
        for s in range(len(y) // b):
            idx = order[s * b : (s + 1) * b]
            run.progress(run.step + 1, model.step(x[idx], y[idx], lr))
            run.trajectory(model.flat())
        test_loss, _ = model.per_sample(xt, yt)
        test_acc = float(np.mean(np.argmax(model.forward(xt)[1], axis=1) == yt))
        run.epoch_end(test_accuracy=test_acc, test_loss=float(test_loss.mean()))
        if run.probe_due:  # D at the weights the epoch ended with, over the training set
            loss, g = model.per_sample(x, y)
            acc = float(np.mean(np.argmax(model.forward(x)[1], axis=1) == y))
            run.probe(g, train_loss=float(loss.mean()), train_accuracy=acc)
        run.checkpoint(model.save())
