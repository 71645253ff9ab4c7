"""Tests of the gradsweep Python package (run by tests/tests/python.rs, or
``python3 -m unittest discover -s python/tests`` once ``pip install ./python``)."""

import math
import unittest

import numpy as np

import gradsweep


def low_rank(n: int, d: int, r: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, r)) @ rng.standard_normal((r, d))).astype(np.float32)


class TorchLike:
    """Stands in for a torch tensor: detach(), cpu(), __array__()."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a

    def detach(self) -> "TorchLike":
        return self

    def cpu(self) -> "TorchLike":
        return self

    def __array__(self, dtype=None, copy=None):
        return self.a if dtype is None else self.a.astype(dtype)


class SketchTests(unittest.TestCase):
    def test_a_low_rank_matrix_has_its_rank_certified(self) -> None:
        g = low_rank(400, 60, 7, 1)
        sk = gradsweep.FdSketch(60, 60)  # ell ≥ d: exact
        sk.insert(g)
        lo, hi = sk.rank()
        # D = (1/n) Σ ggᵀ − ḡḡᵀ of rank-7 rows: rank 7 (the mean's direction lies inside).
        self.assertEqual((lo, hi), (7, 7))
        self.assertEqual(sk.count, 400)
        ev = sk.eigenvalues()
        self.assertEqual(ev.dtype, np.float64)
        self.assertTrue(np.all(np.diff(ev) <= 0), "descending")
        spec = sk.spectrum(relative=[1e-2])
        self.assertEqual(spec["d"], 60)
        self.assertAlmostEqual(spec["trace"], float(np.trace(np.cov(g.astype(np.float64).T, bias=True))), delta=1e-6 * spec["trace"])

    def test_merging_halves_counts_every_sample_once(self) -> None:
        g = low_rank(300, 50, 5, 2)
        a, b = gradsweep.FdSketch(50, 16), gradsweep.FdSketch(50, 16)
        a.insert(g[:120])
        b.insert(TorchLike(g[120:]))
        a.merge(b)
        self.assertEqual(a.count, 300)
        whole = gradsweep.FdSketch(50, 16)
        whole.insert(g)
        self.assertAlmostEqual(a.spectrum()["trace"], whole.spectrum()["trace"], delta=1e-9 * whole.spectrum()["trace"])

    def test_bad_input_names_what_and_where(self) -> None:
        sk = gradsweep.FdSketch(10, 4)
        with self.assertRaisesRegex(ValueError, r"d = 10"):
            sk.insert(np.zeros((3, 11), np.float32))
        bad = np.zeros((3, 10), np.float32)
        bad[2, 4] = np.nan
        with self.assertRaisesRegex(ValueError, r"row 2, column 4"):
            sk.insert(bad)
        with self.assertRaisesRegex(ValueError, r"2-d"):
            sk.insert(np.zeros(10))
        with self.assertRaisesRegex(ValueError, r"ell ≥ 1"):
            gradsweep.FdSketch(10, 0)
        with self.assertRaises(ValueError):
            gradsweep.FdSketch.from_bytes(b"not a sketch")
        other = gradsweep.FdSketch(12, 4)
        with self.assertRaises(ValueError):
            sk.merge(other)
        with self.assertRaisesRegex(ValueError, r"at least 2 samples"):
            gradsweep.analyze_grads(np.zeros((1, 5)))


class TrajectoryTests(unittest.TestCase):
    def test_a_rotation_circulates_and_white_noise_does_not(self) -> None:
        # x_{t+1} = R(θ) x_t + noise: area rate ½ sin θ ⟨|x|²⟩ > 0.
        rng = np.random.default_rng(3)
        theta, t = 0.05, 20000
        c, s = math.cos(theta), math.sin(theta)
        x = np.zeros((t, 2))
        for i in range(1, t):
            p = x[i - 1]
            x[i] = 0.99 * np.array([c * p[0] - s * p[1], s * p[0] + c * p[1]]) + rng.standard_normal(2)
        r = gradsweep.analyze_trajectory(x, projections=2, max_lag=8, psd_window=64)
        self.assertEqual(r["points"], t)
        self.assertFalse(r["projected"])
        self.assertGreater(r["drift"]["area_rate"], 0)
        lo = r["area_rate"]["mean"] - r["area_rate"]["ci95"]
        self.assertGreater(lo, 0, r["area_rate"])
        white = rng.standard_normal((t, 2))  # reversible: no circulation
        w = gradsweep.analyze_trajectory(white, projections=2, max_lag=8)
        a = w["area_rate"]
        self.assertLessEqual(abs(a["mean"]), a["ci95"] * 1.5, a)

    def test_options_are_checked(self) -> None:
        with self.assertRaisesRegex(ValueError, r"psd_window"):
            gradsweep.analyze_trajectory(np.zeros((100, 3)), psd_window=12)
        with self.assertRaisesRegex(ValueError, r"projections"):
            gradsweep.analyze_trajectory(np.zeros((100, 3)), projections=1)


class FakeHandle:
    """What the Rust worker hands train(run), as far as the Python layer uses it."""

    spec_json = (
        '{"train": {"lr": 0.1, "batch_size": 8, "epochs": 2, "trainer": "python:m:f"},'
        ' "probe": {}, "seed": 4, "user": {"hidden": 32}}'
    )

    def __init__(self) -> None:
        self.step, self.losses, self.probes = 0, [], []

    def record_step(self, loss: float) -> None:
        self.step += 1
        self.losses.append(loss)

    def _probe(self, blocks, n, d, train_loss, train_accuracy) -> None:
        self.probes.append((np.concatenate(list(blocks())), n, d))


class RunTests(unittest.TestCase):
    def test_params_hold_the_cells_values_and_user_keys(self) -> None:
        run = gradsweep.Run(FakeHandle())
        self.assertEqual(run.params["lr"], 0.1)
        self.assertEqual((run.params["hidden"], run.params["seed"], run.seed, run.epochs), (32, 4, 4, 2))
        self.assertNotIn("trainer", run.params)

    def test_steps_come_one_at_a_time(self) -> None:
        h = FakeHandle()
        run = gradsweep.Run(h)
        run.progress(1, 0.5)
        with self.assertRaisesRegex(ValueError, r"next is 2"):
            run.progress(3, 0.5)
        self.assertEqual(h.losses, [0.5])

    def test_probe_takes_arrays_torch_like_tensors_and_block_functions(self) -> None:
        h = FakeHandle()
        run = gradsweep.Run(h)
        g = low_rank(20, 6, 2, 3)
        run.probe(TorchLike(g.astype(np.float64)))
        run.probe(lambda: (g[i : i + 7] for i in range(0, 20, 7)), n=20, d=6)
        for got, n, d in h.probes:
            self.assertEqual((n, d, got.dtype), (20, 6, np.float32))
            np.testing.assert_array_equal(got, g)
        with self.assertRaisesRegex(ValueError, r"needs n="):
            run.probe(lambda: [g])
        with self.assertRaisesRegex(ValueError, r"2-d"):
            run.probe(g[0])


if __name__ == "__main__":
    unittest.main()
