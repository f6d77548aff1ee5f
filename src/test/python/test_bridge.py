"""The Python bridge against a float64 rendering of each strategy, zero-copy, ownership, threads, errors."""

import os
import subprocess
import sys
import threading
import tracemalloc
import unittest

import numpy as np
import torch

import fedlora
from fedlora import _bridge, _jvm

import reference

MODULES = ("layers.0.q_proj", "layers.0.v_proj")


def client_tensors(rng, rank, dtype="float32", n=24, m=20, extra=False):
    """One client's adapter: two modules of rank ``rank`` (and a non-LoRA tensor), as ``dtype``."""
    out = {}
    for mod in MODULES:
        out[f"base_model.model.{mod}.lora_A.weight"] = rng.standard_normal((rank, n))
        out[f"base_model.model.{mod}.lora_B.weight"] = rng.standard_normal((m, rank))
    if extra:
        out["classifier.weight"] = rng.standard_normal((3, 5))
    return {k: convert(v, dtype) for k, v in out.items()}


def convert(v, dtype):
    if dtype == "float32":
        return v.astype(np.float32)
    if dtype == "float16":
        return v.astype(np.float16)
    if dtype == "torch.bfloat16":
        return torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
    if dtype == "torch.float16":
        return torch.from_numpy(v.astype(np.float32)).to(torch.float16)
    if dtype == "torch.float32":
        return torch.from_numpy(v.astype(np.float32))
    raise ValueError(dtype)


def clients(seed, ranks, dtype="float32", extra=False):
    rng = np.random.default_rng(seed)
    return [(f"client-{i}", float(rng.integers(1, 500)), client_tensors(rng, r, dtype, extra=extra))
            for i, r in enumerate(ranks)]


class StrategiesAgainstFloat64(unittest.TestCase):

    def check(self, updates, strategy, rank, what):
        got = fedlora.Aggregator(strategy=strategy, rank=rank).aggregate(updates)
        reference.assert_close(self, got, reference.aggregate(updates, strategy, rank), what=what)
        return got

    def test_every_strategy_dtype_and_rank(self):
        ranks = [2, 4, 8, 3, 8]
        for dtype in ("float32", "float16", "torch.bfloat16", "torch.float16", "torch.float32"):
            for strategy in fedlora.STRATEGIES:
                for rank in (0, 3, 11):  # the clients' largest, below some clients', above all
                    with self.subTest(dtype=dtype, strategy=strategy, rank=rank):
                        self.check(clients(7, ranks, dtype, extra=True), strategy, rank, f"{dtype}/{strategy}/R={rank}")

    def test_one_hundred_clients(self):
        rng = np.random.default_rng(11)
        ranks = [int(r) for r in rng.choice([1, 2, 4, 8, 16], size=100)]
        for dtype in ("float32", "torch.bfloat16", "float16"):
            for strategy in fedlora.STRATEGIES:
                with self.subTest(dtype=dtype, strategy=strategy):
                    self.check(clients(12, ranks, dtype), strategy, 0, f"K=100 {dtype}/{strategy}")

    def test_reference_tells_strategies_apart(self):
        # The comparison above is not vacuous: zero-padding's result is far from replication's.
        updates = clients(3, [2, 8, 8])
        got = fedlora.Aggregator(strategy="zero").aggregate(updates)
        with self.assertRaises(AssertionError):
            reference.assert_close(self, got, reference.aggregate(updates, "replication", 0))

    def test_mixed_dtypes_and_layouts(self):
        updates = clients(5, [4, 2, 6])
        mixed = []
        for (cid, w, t), dtype in zip(updates, ("torch.bfloat16", "float16", "float32")):
            mixed.append((cid, w, {k: convert(v.astype(np.float64), dtype) for k, v in t.items()}))
        # A Fortran-ordered and a transposed-view client: made contiguous once, same values.
        fortran = {k: np.asfortranarray(v) for k, v in updates[2][2].items()}
        strided = {k: np.ascontiguousarray(v.T).T for k, v in updates[1][2].items()}
        self.assertFalse(next(iter(strided.values())).flags.c_contiguous)
        mixed += [("fortran", 3.0, fortran), ("strided", 2.0, strided)]
        self.check(mixed, "replication", 0, "mixed")

    def test_big_endian_input_is_read_right(self):
        updates = clients(9, [2, 4])
        swapped = [(cid, w, {k: v.astype(">f4") for k, v in t.items()}) for cid, w, t in updates]
        self.check(swapped, "replication", 0, "big-endian")

    def test_backends_agree(self):
        updates = clients(21, [3, 5, 8])
        a = fedlora.Aggregator(backend="scalar")
        self.assertEqual(a.backend_name, "scalar")
        got = a.aggregate(updates)
        reference.assert_close(self, got, reference.aggregate(updates, "replication", 0), what="scalar")
        a.close()

    def test_scale_folding(self):
        # B_k is multiplied by alpha / r_k before averaging, the global B divided by alpha / R.
        updates = clients(4, [2, 8])
        alpha = 16.0
        got = fedlora.Aggregator(scale=fedlora.LoraScale(alpha)).aggregate(updates)
        folded = []
        for cid, w, t in updates:
            ft = {}
            for k, v in t.items():
                r = t[k.replace("lora_B", "lora_A")].shape[0]
                ft[k] = v.astype(np.float64) * (alpha / r) if ".lora_B." in k else v.astype(np.float64)
            folded.append((cid, w, ft))
        want = reference.aggregate(folded, "replication", 0)
        want = {k: (v / (alpha / 8) if ".lora_B." in k else v) for k, v in want.items()}
        reference.assert_close(self, got, want, what="folded")


class ZeroCopyAndOwnership(unittest.TestCase):

    def test_java_reads_the_numpy_memory_itself(self):
        c = _jvm.classes()
        arr = np.arange(12, dtype=np.float32).reshape(3, 4)
        scope = _bridge.CallScope(c)
        t = _bridge.java_tensor(c, arr, "c", "k", scope)
        self.assertEqual(int(t.data().address()), arr.ctypes.data)
        arr[1, 2] = -42.5  # a later write is seen through the Java tensor: no copy was taken
        self.assertEqual(float(t.get(6)), -42.5)

    def test_torch_bfloat16_travels_as_its_own_memory(self):
        c = _jvm.classes()
        x = torch.tensor([[1.5, -2.0], [3.25, 8.0]], dtype=torch.bfloat16)
        t = _bridge.java_tensor(c, x, "c", "k", _bridge.CallScope(c))
        self.assertEqual(str(t.dtype()), "BF16")
        self.assertEqual(int(t.data().address()), x.data_ptr())
        x[1, 0] = -0.5
        self.assertEqual(float(t.get(2)), -0.5)

    def test_a_strided_array_is_copied_once_and_that_copy_read_in_place(self):
        c = _jvm.classes()
        base = np.arange(24, dtype=np.float32).reshape(4, 6)
        view = base[:, ::2]
        scope = _bridge.CallScope(c)
        t = _bridge.java_tensor(c, view, "c", "k", scope)
        self.assertNotEqual(int(t.data().address()), base.ctypes.data)
        self.assertEqual(int(t.data().address()), scope.keep[0].ctypes.data)
        self.assertEqual([float(t.get(i)) for i in range(3)], [0.0, 2.0, 4.0])

    def test_java_cannot_read_an_input_after_aggregate_or_truncate_returns(self):
        # Every view the bridge made during aggregate / truncate is dead once the call returns.
        c = _jvm.classes()
        made = []
        original = _bridge.java_tensor

        def spy(*args):
            t = original(*args)
            made.append(t)
            return t

        _bridge.java_tensor = spy
        try:
            updates = clients(3, [2, 4], extra=True)
            agg = fedlora.Aggregator()
            agg.aggregate(updates)
            fedlora.truncate(updates[1][2], 1)
        finally:
            _bridge.java_tensor = original
        self.assertEqual(len(made), 2 * 5 + 5)
        for t in made:
            with self.assertRaises(c.IllegalStateException):
                t.get(0)

    def test_a_round_allocates_no_copy_of_its_inputs(self):
        # Timing-free proof that neither Python nor Java copies the inputs: the bytes allocated on
        # the Python heap (tracemalloc sees numpy's allocations) and by the Java thread doing the
        # call are each far below the bytes of input, while the sums are allocated once (first add).
        c = _jvm.classes()
        mx = c.jpype.JClass("java.lang.management.ManagementFactory").getThreadMXBean()
        rng = np.random.default_rng(1)
        updates = [(f"c{i}", 1.0 + i, {
            "m.lora_A.weight": rng.standard_normal((16, 4096), dtype=np.float32),
            "m.lora_B.weight": rng.standard_normal((4096, 16), dtype=np.float32)}) for i in range(8)]
        input_bytes = sum(a.nbytes for _, _, t in updates for a in t.values())  # 4 MiB
        # The scalar backend: the vector backend's loops box every vector until C2 has compiled
        # them (megabytes of garbage per add in a cold JVM), which would hide what this looks for.
        rnd = fedlora.Aggregator(backend="scalar").round()
        rnd.add(*updates[0])  # allocates the sums
        tracemalloc.start()
        java_before = mx.getCurrentThreadAllocatedBytes()
        for u in updates[1:]:
            rnd.add(*u)
        java_bytes = mx.getCurrentThreadAllocatedBytes() - java_before
        _, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        self.assertLess(python_peak, input_bytes // 16, "the Python side copied inputs")
        self.assertLess(java_bytes, input_bytes // 16, "the Java side copied inputs")
        reference.assert_close(self, rnd.finish(), reference.aggregate(updates), what="round")

    def test_a_round_reads_its_inputs_only_during_add(self):
        # Round.add wraps inputs with global-scope views (see _bridge): whatever the round keeps,
        # it must not read them later. Overwriting them after add changes no later finish.
        updates = clients(6, [2, 8, 4])
        rnd = fedlora.Aggregator().round()
        for u in updates:
            rnd.add(*u)
        before = rnd.finish()
        for _, _, t in updates:
            for v in t.values():
                v[...] = 1e6
        after = rnd.finish()
        for k in before:
            np.testing.assert_array_equal(after[k], before[k])

    def test_outputs_are_numpy_owned_and_independent(self):
        updates = clients(2, [2, 4], extra=True)
        agg = fedlora.Aggregator()
        got = agg.aggregate(updates)
        self.assertEqual(list(got), list(updates[0][2]))
        for k, v in got.items():
            self.assertIsInstance(v, np.ndarray)
            self.assertTrue(v.flags.owndata and v.flags.c_contiguous and v.flags.writeable, k)
            self.assertEqual(v.dtype, np.float32)
        before = {k: v.copy() for k, v in got.items()}
        for v in updates[0][2].values():
            v[...] = 1e6  # changing an input after the call changes no output
        for k in got:
            np.testing.assert_array_equal(got[k], before[k])


class RoundsThreadsAndRefusals(unittest.TestCase):

    def test_round_from_many_threads_equals_batch(self):
        updates = clients(31, [2, 4, 8, 16] * 6)
        agg = fedlora.Aggregator()
        rnd = agg.round()
        errors = []

        def work(part):
            try:
                for u in part:
                    rnd.add(*u)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        side_updates = clients(35, [8, 2, 5])
        side = agg.round()
        for u in side_updates:
            side.add(*u)
        snapshots = []

        def read_and_merge():
            try:
                for _ in range(5):
                    snapshots.append(rnd.finish())  # concurrent with the adds
                rnd.merge(side)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        rnd.add(*updates[0])  # so that a finish racing the first adds has a client to finish
        threads = [threading.Thread(target=work, args=(updates[1 + i::6],)) for i in range(6)]
        threads.append(threading.Thread(target=read_and_merge))
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads), "a thread hung")
        self.assertEqual(errors, [])
        self.assertEqual(len(snapshots), 5)
        self.assertEqual(rnd.client_count, len(updates) + len(side_updates))
        everyone = updates + side_updates
        want = reference.aggregate(everyone)
        got = rnd.finish()
        reference.assert_close(self, got, {k: want[k] for k in got}, what="threads")

    def test_merge_of_two_rounds_equals_all_clients(self):
        updates = clients(32, [2, 8, 4, 6])
        agg = fedlora.Aggregator(strategy="zero", rank=5)
        left, right = agg.round(), agg.round()
        for u in updates[:2]:
            left.add(*u)
        for u in updates[2:]:
            right.add(*u)
        right_before = right.finish()
        left.merge(right)
        reference.assert_close(self, left.finish(), reference.aggregate(updates, "zero", 5), what="merge")
        for k, v in right.finish().items():
            np.testing.assert_array_equal(v, right_before[k])

    def test_partials_travel_as_python_data_and_merge(self):
        import pickle
        updates = clients(34, [2, 8, 4, 6, 3])
        agg = fedlora.Aggregator(strategy="replication")
        here, there = agg.round(), agg.round()
        for u in updates[:2]:
            here.add(*u)
        for u in updates[2:]:
            there.add(*u)
        sent = pickle.loads(pickle.dumps(there.to_partial()))  # e.g. from another server
        self.assertEqual(sent.client_count, 3)
        here.merge_partial(sent)
        want = reference.aggregate(updates)
        reference.assert_close(self, here.finish(), {k: want[k] for k in here.finish()}, what="merge_partial")
        alone = fedlora.Aggregator(strategy="replication").round_from_partial(sent)
        reference.assert_close(self, alone.finish(), reference.aggregate(updates[2:]), what="round_from_partial")
        bad = fedlora.Partial({k: v.copy() for k, v in sent.tensors.items()}, dict(sent.metadata))
        next(iter(bad.tensors.values()))[0, 0] = np.nan
        with self.assertRaises(ValueError):
            agg.round_from_partial(bad)
        with self.assertRaises(ValueError):  # other settings: the policies differ
            fedlora.Aggregator(strategy="zero").round_from_partial(sent)

    def test_refused_client_is_named_and_round_unchanged(self):
        updates = clients(33, [2, 4, 8])
        rnd = fedlora.Aggregator().round()
        for u in updates[:2]:
            rnd.add(*u)
        before = rnd.finish()
        bad = {k: v.copy() for k, v in updates[2][2].items()}
        key = "base_model.model.layers.0.v_proj.lora_B.weight"
        bad[key][3, 1] = np.nan
        with self.assertRaises(fedlora.InvalidUpdate) as caught:
            rnd.add("site-nan", 5.0, bad)
        e = caught.exception
        self.assertEqual(e.client_id, "site-nan")
        self.assertEqual(e.module, "base_model.model.layers.0.v_proj")
        self.assertIn("NaN", e.message)
        self.assertIn("site-nan", str(e))
        after = rnd.finish()
        for k in before:
            np.testing.assert_array_equal(after[k], before[k])  # bit for bit
        rnd.add(*updates[2])  # and the round goes on
        reference.assert_close(self, rnd.finish(), reference.aggregate(updates), what="after refusal")

    def test_bad_weight_and_bad_dtype_name_the_client(self):
        agg = fedlora.Aggregator()
        t = clients(1, [2])[0][2]
        with self.assertRaises(fedlora.InvalidUpdate) as caught:
            agg.aggregate([("neg", -1.0, t)])
        self.assertEqual(caught.exception.client_id, "neg")
        with self.assertRaisesRegex(TypeError, "client 'ints', tensor 'x.lora_A.weight': dtype int64"):
            agg.aggregate([("ints", 1.0, {"x.lora_A.weight": np.zeros((2, 3), dtype=np.int64)})])
        with self.assertRaisesRegex(ValueError, "strategy must be one of"):
            fedlora.Aggregator(strategy="mean")

    def test_truncate_is_the_leading_components(self):
        g = fedlora.Aggregator().aggregate(clients(8, [8, 4], extra=True))
        t = fedlora.truncate(g, 3)
        self.assertEqual(list(t), list(g))
        for k, v in g.items():
            kind = reference.factor_kind(k)
            want = v[:3] if kind == "A" else v[:, :3] if kind == "B" else v
            np.testing.assert_array_equal(t[k], want)
        with self.assertRaisesRegex(ValueError, "cannot truncate to 9"):
            fedlora.truncate(g, 9)


class SvdSplit(unittest.TestCase):
    """strategy="svd" with split="flexlora" (default) or "balanced": the same s B A, the best rank-R
    approximation of the float64 weighted average; balanced factors have ||B e_i|| = ||A^T e_i||,
    FlexLoRA's A rows are unit vectors; truncate() of either is each rank's best approximation."""

    RANK = 6

    def best(self, updates, key_a, r, scale=None):
        key_b = key_a.replace("lora_A", "lora_B")
        total = sum(w for _, w, _ in updates)
        dw = sum((w / total) * (1.0 if scale is None else scale / t[key_a].shape[0])
                 * t[key_b].astype(np.float64) @ t[key_a].astype(np.float64) for _, w, t in updates)
        u, sigma, vt = np.linalg.svd(dw)
        return dw, (u[:, :r] * sigma[:r]) @ vt[:r], sigma

    def test_both_splits_give_the_best_rank_r_product(self):
        updates = clients(51, [2, 4, 8, 3])
        for alpha in (None, 16.0):
            scale = None if alpha is None else fedlora.LoraScale(alpha)
            s_out = 1.0 if alpha is None else alpha / self.RANK
            got = {}
            for split in (None,) + fedlora.SPLITS:
                with self.subTest(split=split, alpha=alpha):
                    agg = fedlora.Aggregator(strategy="svd", rank=self.RANK, split=split, scale=scale)
                    self.assertEqual(agg.split, split or "flexlora")
                    g = got[split] = agg.aggregate(updates)
                    agg.close()
                    for mod in MODULES:
                        key_a = f"base_model.model.{mod}.lora_A.weight"
                        a, b = g[key_a].astype(np.float64), g[key_a.replace("lora_A", "lora_B")].astype(np.float64)
                        self.assertEqual(a.shape[0], self.RANK)
                        dw, want, sigma = self.best(updates, key_a, self.RANK, alpha)
                        err = np.linalg.norm(s_out * b @ a - want) / np.linalg.norm(dw)
                        self.assertLess(err, 2e-6, f"{split}/{mod}")
                        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0)
                        if split == "balanced":
                            np.testing.assert_allclose(nb, na, rtol=1e-5)
                            np.testing.assert_allclose(nb * na, sigma[:self.RANK] / s_out, rtol=2e-5)
                        else:
                            np.testing.assert_allclose(na, 1.0, rtol=1e-5)
                        for r in (2, 3, 4):
                            t = fedlora.truncate(g, r)
                            ta = t[key_a].astype(np.float64)
                            tb = t[key_a.replace("lora_A", "lora_B")].astype(np.float64)
                            _, want_r, _ = self.best(updates, key_a, r, alpha)
                            self.assertLess(np.linalg.norm(s_out * tb @ ta - want_r) / np.linalg.norm(dw), 2e-6)
            np.testing.assert_array_equal(got[None]["base_model.model.layers.0.q_proj.lora_A.weight"],
                                          got["flexlora"]["base_model.model.layers.0.q_proj.lora_A.weight"])
            self.assertFalse(np.allclose(got["flexlora"]["base_model.model.layers.0.q_proj.lora_A.weight"],
                                         got["balanced"]["base_model.model.layers.0.q_proj.lora_A.weight"]))

    def test_a_balanced_round_and_its_partial_equal_the_batch(self):
        updates = clients(52, [2, 4, 8, 3])
        with fedlora.Aggregator(strategy="svd", rank=self.RANK, split="balanced") as agg, \
                fedlora.Aggregator(strategy="svd", rank=self.RANK) as flex:
            batch = agg.aggregate(updates)
            with agg.round() as rnd:
                for u in updates:
                    rnd.add(*u)
                for k, v in rnd.finish().items():
                    np.testing.assert_array_equal(v, batch[k], k)
                partial = rnd.to_partial()
            with agg.round_from_partial(partial) as again:
                for k, v in again.finish().items():
                    np.testing.assert_array_equal(v, batch[k], k)
            with flex.round() as other, self.assertRaisesRegex(ValueError, "only rounds of equal policies merge"):
                other.merge_partial(partial)

    def test_bad_split_values(self):
        with self.assertRaisesRegex(ValueError, "split must be one of flexlora, balanced, got 'diagonal'"):
            fedlora.Aggregator(strategy="svd", split="diagonal")
        with self.assertRaisesRegex(TypeError, "split must be"):
            fedlora.Aggregator(strategy="svd", split=1)
        for strategy in ("zero", "replication", "norm", "stack"):
            with self.assertRaisesRegex(ValueError, "split applies to strategy 'svd' only"):
                fedlora.Aggregator(strategy=strategy, split="flexlora")
        self.assertEqual(fedlora.Aggregator(strategy="SVD", split="Balanced").split, "balanced")


class DownloadTruncation(unittest.TestCase):
    """What the Flower strategies send a client: the global cut to the ranks it last sent."""

    def test_cut_per_factor_never_above_the_global_rank(self):
        from fedlora import _peft
        g = fedlora.Aggregator(rank=4).aggregate(clients(40, [2, 8], extra=True))
        q_a, q_b = "base_model.model.layers.0.q_proj.lora_A.weight", "base_model.model.layers.0.q_proj.lora_B.weight"
        v_a = "base_model.model.layers.0.v_proj.lora_A.weight"
        self.assertEqual(_peft.ranks(g)[q_a], 4)
        cut = _peft.truncate_for(g, {q_a: 2, q_b: 2, v_a: 8})  # v_proj: above the global rank
        self.assertEqual(list(cut), list(g))
        np.testing.assert_array_equal(cut[q_a], g[q_a][:2])
        np.testing.assert_array_equal(cut[q_b], g[q_b][:, :2])
        np.testing.assert_array_equal(cut[v_a], g[v_a])
        np.testing.assert_array_equal(cut["classifier.weight"], g["classifier.weight"])
        self.assertEqual(_peft.factor("x.lora_embedding_A.default"), "A")
        self.assertEqual(_peft.factor("x.lora_B.default.weight"), "B")
        self.assertIsNone(_peft.factor("x.lora_dropout.weight"))


class StartUpErrors(unittest.TestCase):

    @unittest.skipUnless(os.environ.get("FEDLORA_TEST_INSTALLED") == "1", "run from the source tree, not installed")
    def test_the_installed_package_runs_on_its_bundled_jars(self):
        # bin/test-python installs with bin/install-python first: the package and jar users get.
        self.assertIn("site-packages", fedlora.__file__)
        jars = _jvm.class_path()
        self.assertTrue(jars[0].endswith(os.path.join("fedlora", "_jars", "fedlora.jar")), jars[0])
        self.assertTrue(os.path.isfile(jars[0]))

    def test_no_jdk_25_says_what_to_install(self):
        env = {k: v for k, v in os.environ.items() if k not in ("FEDLORA_JAVA_HOME", "JAVA_HOME")}
        code = ("import glob, fedlora._jvm as j; glob.glob = lambda p: []\n"
                "try:\n    j.find_java_home()\nexcept j.FedloraUnavailable as e:\n    print(e)")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        self.assertIn("no JDK 25 found", out.stdout)
        self.assertIn("FEDLORA_JAVA_HOME", out.stdout)

    def test_no_jpype_says_what_to_install(self):
        code = ("import sys; sys.modules['jpype'] = None\nimport fedlora\n"
                "try:\n    fedlora.Aggregator()\nexcept fedlora.FedloraUnavailable as e:\n    print(e)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        self.assertIn("JPype is not installed", out.stdout)
        self.assertIn("python3-jpype", out.stdout)
