"""Python workers: your model, trained by your code, in a gradsweep sweep.

A grid names your function as its trainer (``[train] trainer =
"python:my_package.train:main"``) and may declare its own keys in ``[user]``.
``Worker(coordinator).serve(main)`` registers with the coordinator as a
worker of that trainer and calls ``main(run)`` for each run it is leased. The
worker itself — registration, heartbeats, leases, fencing, the acknowledged
report stream, checkpoints, drain and SIGTERM hand-back — is gradsweep's Rust
worker, not a copy; your function only trains::

    def main(run: gradsweep.Run) -> None:
        model, opt = build(run.params), ...
        if (state := run.resume_state()) is not None:
            model, opt = restore(state)          # your bytes, as you saved them
        for epoch in range(run.epoch, run.epochs):
            for x, y in batches(run.params, epoch):
                loss = sgd_step(model, opt, x, y)
                run.progress(run.step + 1, loss)
                run.trajectory(flat_weights(model))
            run.epoch_end(test_accuracy=evaluate(model))
            if run.probe_due:                        # after the epochs the grid says
                run.probe(per_sample_grads(model))   # (n, d): NumPy, torch, JAX
            run.checkpoint(save(model, opt))      # may raise RunStopped: let it

A run resumed elsewhere (its worker died, or was drained) starts at its last
checkpoint: ``run.epoch`` and ``run.step`` say where, ``run.resume_state()``
returns your bytes. When your code is deterministic, the result is
bit-identical to a run that never stopped.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import _gradsweep
from ._arrays import matrix

RunStopped = _gradsweep.RunStopped


class Run:
    """One run of the sweep, as ``train(run)`` receives it.

    ``params`` holds the cell's values: the standard ``[train]`` keys (``lr``,
    ``batch_size``, ``epochs``, ``momentum``, ``model``, ``dataset``, …), the
    grid's ``[user]`` keys, and ``seed``. ``spec`` is the whole run spec
    (``train``, ``probe``, ``user``, ``seed``).
    """

    def __init__(self, handle: Any) -> None:
        self._h = handle
        self.spec: dict[str, Any] = json.loads(handle.spec_json)
        train = {k: v for k, v in self.spec["train"].items() if k != "trainer"}
        self.params: dict[str, Any] = {**train, **self.spec.get("user", {}), "seed": self.spec["seed"]}

    @property
    def seed(self) -> int:
        """The run's seed: draw every random number of the run from it."""
        return int(self.spec["seed"])

    @property
    def epochs(self) -> int:
        """Epochs the run trains."""
        return int(self.spec["train"]["epochs"])

    @property
    def epoch(self) -> int:
        """Epochs done: where the run (re)starts."""
        return self._h.epoch

    @property
    def step(self) -> int:
        """Steps done."""
        return self._h.step

    @property
    def probe_epochs(self) -> list[int]:
        """Epochs after which the run probes D (the last one included)."""
        return self._h.probe_epochs

    @property
    def probe_due(self) -> bool:
        """Whether the epoch just ended is one the grid probes after: call
        :meth:`probe` before the next step or checkpoint."""
        return self._h.probe_due

    @property
    def stopped(self) -> bool:
        """Whether the run was asked to stop (the next call raises RunStopped)."""
        return self._h.stopped

    def resume_state(self) -> bytes | None:
        """Your state from the checkpoint the run resumes from; None on a fresh start."""
        return self._h.resume_state()

    def progress(self, step: int, loss: float) -> None:
        """Step ``step`` (one more than :attr:`step`) ended with mini-batch loss ``loss``."""
        if step != self.step + 1:
            raise ValueError(f"progress(step={step}): steps are reported one at a time, next is {self.step + 1}")
        self._h.record_step(float(loss))

    def epoch_end(
        self,
        train_loss: float | None = None,
        test_accuracy: float | None = None,
        test_loss: float | None = None,
    ) -> None:
        """An epoch ended. ``train_loss`` defaults to the mean of its steps' losses."""
        self._h.epoch_end(train_loss, test_accuracy, test_loss)

    def probe(
        self,
        grads: Any,
        *,
        n: int | None = None,
        d: int | None = None,
        train_loss: float = float("nan"),
        train_accuracy: float = float("nan"),
    ) -> None:
        """Sketch D from per-sample gradients over the whole training set (eval mode).

        ``grads`` is an ``(n, d)`` array (NumPy, torch, JAX), or a function
        returning an iterable of ``(rows, d)`` blocks covering the ``n``
        samples in the same order each call (give ``n`` and ``d``): an
        auto-sized probe (``sketch_rank = "auto"``) calls it again at larger
        sizes until D's rank is resolved.
        """
        if callable(grads):
            if n is None or d is None:
                raise ValueError("probe(blocks_function) needs n= (samples) and d= (parameters)")
            source: Callable[[], Iterable[Any]] = grads

            def blocks() -> Iterable[np.ndarray]:
                return (matrix(b, np.float32, "a gradient block") for b in source())

            self._h._probe(blocks, n, d, train_loss, train_accuracy)
        else:
            g = matrix(grads, np.float32, "grads")
            self._h._probe(lambda: [g], g.shape[0], g.shape[1], train_loss, train_accuracy)

    def trajectory(self, weights: Any) -> bool:
        """The flat weights after a step; recorded (projected onto the sweep's
        random directions) once the burn-in is over. Returns whether it was."""
        if hasattr(weights, "detach") and hasattr(weights, "cpu"):
            weights = weights.detach().cpu()
        w = np.ascontiguousarray(np.asarray(weights), dtype=np.float32).reshape(-1)
        return self._h._trajectory(w)

    def checkpoint(self, state: bytes) -> None:
        """A segment boundary: your state as bytes, kept by the coordinator.

        Raises :class:`RunStopped` when the run is to be handed back here
        (drain, SIGTERM): let it propagate.
        """
        self._h.checkpoint(bytes(state))


class Worker:
    """A worker that runs one ``python:`` trainer's runs.

    ``coordinator`` is ``host:port`` or a URL. The token comes from
    ``token``, else ``token_file``, else ``$GRADSWEEP_TOKEN``; ``tls_ca``
    turns on TLS. ``trainer`` defaults to ``python:MODULE:FUNCTION`` of the
    function given to :meth:`serve` (pass it when that function lives in a
    script, whose module is ``__main__``).
    """

    def __init__(
        self,
        coordinator: str,
        *,
        token: str | None = None,
        token_file: str | None = None,
        slots: int = 1,
        name: str | None = None,
        trainer: str | None = None,
        tls_ca: str | None = None,
        tls_domain: str | None = None,
        idle_exit: float | None = None,
        handback_grace: float = 20.0,
    ) -> None:
        if slots < 1:
            raise ValueError(f"slots must be ≥ 1, got {slots}")
        self.coordinator, self.token, self.token_file = coordinator, token, token_file
        self.slots, self.name, self.trainer = slots, name, trainer
        self.tls_ca, self.tls_domain = tls_ca, tls_domain
        self.idle_exit, self.handback_grace = idle_exit, handback_grace

    def serve(self, train: Callable[[Run], None]) -> None:
        """Run ``train(run)`` for each run leased to this worker, until SIGTERM
        or SIGINT (runs handed back), a drain, or ``idle_exit`` seconds without work."""
        trainer = self.trainer or f"python:{train.__module__}:{train.__qualname__}"
        _gradsweep._serve(
            self.coordinator,
            trainer,
            lambda handle: train(Run(handle)),
            slots=self.slots,
            name=self.name,
            token=self.token,
            token_file=self.token_file,
            tls_ca=self.tls_ca,
            tls_domain=self.tls_domain,
            idle_exit_secs=float(self.idle_exit or 0.0),
            handback_grace_secs=float(self.handback_grace),
        )


def main(train: Callable[[Run], None], argv: Sequence[str] | None = None, trainer: str | None = None) -> None:
    """The command line of a worker script: ``--coordinator HOST:PORT
    [--slots N] [--name NAME] [--token-file F] [--tls-ca PEM] [--idle-exit S]``,
    then :meth:`Worker.serve` of ``train``."""
    a = argparse.ArgumentParser(description=f"a gradsweep worker of {train.__module__}.{train.__qualname__}")
    a.add_argument("--coordinator", required=True, help="HOST:PORT or a URL")
    a.add_argument("--slots", type=int, default=1, help="runs at once")
    a.add_argument("--name", help="as `gradsweep workers` lists it")
    a.add_argument("--token-file", help="the coordinator's token (default: $GRADSWEEP_TOKEN)")
    a.add_argument("--tls-ca", help="PEM of the CA to trust (turns on TLS)")
    a.add_argument("--idle-exit", type=float, default=None, help="leave after this many seconds without work")
    args = a.parse_args(argv)
    Worker(
        args.coordinator,
        slots=args.slots,
        name=args.name,
        token_file=args.token_file,
        tls_ca=args.tls_ca,
        idle_exit=args.idle_exit,
        trainer=trainer,
    ).serve(train)
