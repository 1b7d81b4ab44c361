"""The slice store (cache/store.py) and the two ways a fold is read (training/data.py): in memory, or gathered
batch by batch from the memory map. Both must give the same batches, the same trained weights and the same
scores; a store that no longer matches its NPZs is not used: the job that reads it packs it again."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ichbench.cache import pack, store
from ichbench.errors import ConfigError
from ichbench.synthetic.toy import toy_head_slices
from ichbench.training.data import DeviceBatches, load_slices, open_slices

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
TINY = 1e-6          # a memory budget (GB) no fold fits: the store path


def write_shard(folder: Path, series: dict[str, int], seed: int) -> None:
    """A cache shard: one NPZ per series (the keys the store packs) and its series.csv."""
    folder.mkdir(parents=True)
    rows = []
    for k, (name, n) in enumerate(series.items()):
        x, head, brain = toy_head_slices(n, SIZE, seed=seed + k)
        images = np.clip(np.rint((x + 1) * 127.5), 0, 255).astype(np.uint8)
        gt = np.zeros_like(brain)
        gt[:, 10:14, 10:14] = brain[:, 10:14, 10:14] & (k % 2 == 1)
        np.savez(folder / f"{name}.npz", images=images, head_mask=head, brain_mask=brain, gt_mask=gt,
                 has_gt=np.bool_(k % 2 == 1))
        rows.append({"npz": f"{name}.npz", "n_slices": n, "series_uid": name})
    pd.DataFrame(rows).to_csv(folder / "series.csv", index=False)


@pytest.fixture
def cache(tmp_path):
    """Two packed shards of 3 + 2 series (37 slices) and a manifest over them in a mixed order."""
    write_shard(tmp_path / "shard-0", {"s0": 9, "s1": 5, "s2": 7}, seed=0)
    write_shard(tmp_path / "shard-1", {"s3": 10, "s4": 6}, seed=10)
    for shard in ("shard-0", "shard-1"):
        pack.pack_shard(tmp_path / shard)
    rows = []
    for shard, series in (("shard-0", {"s0": 9, "s1": 5, "s2": 7}), ("shard-1", {"s3": 10, "s4": 6})):
        for name, n in series.items():
            for i in range(n):
                rows.append({"fold": 0, "patient_id": f"P{name}", "series_uid": name, "sop_uid": f"{name}.{i}",
                             "slice_index": i, "npz": str(tmp_path / shard / f"{name}.npz")})
    rows = pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)
    # s0, s3: normal patients (training); s1, s4: ill (test); s2: normal (validation)
    part = {"s0": "train", "s3": "train", "s1": "test", "s4": "test", "s2": "val"}
    rows["part"] = rows["series_uid"].map(part)
    rows["scan_label"] = rows["series_uid"].isin(["s1", "s4"]).astype(int)
    rows["slice_truth"] = rows["scan_label"] * (rows["slice_index"] % 2)
    rows["label"] = rows["slice_truth"]
    rows.loc[rows["part"] == "train", ["label", "slice_truth"]] = 0
    manifest = tmp_path / "fold-0.csv"
    rows.to_csv(manifest, index=False)
    return tmp_path, rows, manifest


def test_the_store_holds_the_npz_bytes_and_gathers_in_the_order_asked(cache):
    root, rows, _ = cache
    meta = (root / "shard-0" / "store" / "store.json").read_text()
    assert '"slices": 21' in meta
    mapped = np.load(root / "shard-0" / "store" / "images.npy", mmap_mode="r")   # a plain .npy
    with np.load(root / "shard-0" / "s1.npz") as z:
        assert np.array_equal(mapped[9:14], z["images"])
    ref = load_slices(rows, extra=("gt_mask",))
    got = open_slices(rows, extra=("gt_mask",), memory_budget_gb=TINY)
    assert not got.in_memory and ref.in_memory
    idx = np.random.default_rng(0).permutation(len(rows))[:17]
    assert np.array_equal(got.images[idx], ref.images[idx])
    for k in ("head_mask", "brain_mask", "gt_mask"):
        assert got.masks[k][idx].dtype == bool
        assert np.array_equal(got.masks[k][idx], ref.masks[k][idx])
    assert np.array_equal(got.images[3], ref.images[3])
    assert np.array_equal(np.concatenate(list(got.images.chunks(5))), ref.images)
    assert got.images.shape == ref.images.shape and got.images.nbytes == ref.images.nbytes


def test_auto_loads_a_fold_that_fits_and_maps_one_that_does_not(cache):
    _, rows, _ = cache
    assert open_slices(rows).in_memory
    assert not open_slices(rows, memory_budget_gb=TINY).in_memory
    assert not open_slices(rows, in_memory="false").in_memory
    assert open_slices(rows, in_memory=True, memory_budget_gb=TINY).in_memory
    with pytest.raises(ConfigError, match="in_memory must be"):
        open_slices(rows, in_memory="sometimes")


def test_a_missing_or_stale_store_is_repacked_by_the_job_that_needs_it(cache):
    root, rows, _ = cache
    npz = root / "shard-1" / "s3.npz"
    st = npz.stat()
    os.utime(npz, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))      # rewritten after packing
    assert "s3.npz changed since" in store.open_fold(rows)[1]           # the stale store itself is not used
    before = (root / "shard-0" / "store" / "index.csv").stat().st_mtime_ns
    mapped = open_slices(rows, memory_budget_gb=TINY, where="fold-0.csv")
    assert not mapped.in_memory and store.open_fold(rows)[1] is None   # shard-1 repacked, then read
    assert (root / "shard-0" / "store" / "index.csv").stat().st_mtime_ns == before     # shard-0 left as it was
    assert open_slices(rows).in_memory                                 # it fits: loaded from the NPZs
    assert np.array_equal(mapped.images[np.arange(len(rows))], open_slices(rows).images)
    (root / "shard-0" / "store" / "store.json").unlink()
    assert not open_slices(rows, in_memory="false").in_memory         # no store: packed
    assert (root / "shard-0" / "store" / "store.json").exists()
    assert not list(root.glob("shard-*/store.partial*"))


def test_a_store_that_cannot_be_packed_is_a_clear_error(cache):
    root, rows, _ = cache
    shutil.rmtree(root / "shard-0" / "store")
    (root / "shard-0" / "series.csv").unlink()                          # not a shard preprocess wrote
    with pytest.raises(ConfigError, match=r"shard-0 has no slice store.*packing it failed.*ichbench pack"):
        open_slices(rows, memory_budget_gb=TINY, where="fold-0.csv")


def test_a_stopped_packers_partial_store_is_removed_and_a_live_one_kept(cache):
    """Partial folders are named by host and pid: this host's dead packer's is removed; another host's is kept
    until it has not changed for a day (its packer cannot be asked)."""
    import socket
    import subprocess
    import sys

    root = cache[0] / "shard-0"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    gone = root / f"store.partial-{socket.gethostname()}-{dead}"
    live = root / f"store.partial-{socket.gethostname()}-{os.getppid()}"
    other = root / "store.partial-some-other-node-12"
    old = root / "store.partial-some-other-node-13"
    for d in (gone, live, other, old):
        d.mkdir()
    day_ago = old.stat().st_mtime - pack.STALE_PARTIAL_S - 60
    os.utime(old, (day_ago, day_ago))
    pack.pack_shard(root)
    assert not gone.exists() and not old.exists()
    assert live.exists() and other.exists()


def test_preprocess_writes_the_store_where_a_fold_may_not_fit(tmp_path):
    """store_needed: the selected series' slices (one per DICOM file of the index, a NIfTI volume's n_slices),
    their images (3 windows) and 3 masks at 128 px, against the budget."""
    pd.DataFrame({"series_uid": ["a", "b", "c"], "selected": [True, True, False]}).to_csv(
        tmp_path / "series_candidates.csv", index=False)
    pd.DataFrame({"series_uid": ["a"] * 3000 + ["b"] * 2000 + ["c"] * 7000}).to_csv(tmp_path / "index.csv",
                                                                                   index=False)
    assert pack.cohort_slices(tmp_path) == 5000
    per_slice = 6 * 128 * 128                                           # 98,304 bytes
    assert not pack.store_needed(tmp_path, 3, 128, 5000 * per_slice / 2**30)     # 5,000 selected slices fit
    assert pack.store_needed(tmp_path, 3, 128, 4999 * per_slice / 2**30)
    assert pack.store_needed(tmp_path, 3, 256, 5000 * per_slice / 2**30)
    pd.DataFrame({"series_uid": ["a", "b", "c"], "n_slices": [3000, 2000, 10**7]}).to_csv(tmp_path / "index.csv",
                                                                                         index=False)
    assert pack.cohort_slices(tmp_path) == 5000                        # NIfTI volumes: their slice counts
    (tmp_path / "index.csv").unlink()
    assert pack.cohort_slices(tmp_path) is None
    assert pack.store_needed(tmp_path, 3, 128, 1000.0)                 # slice count unknown: written


def _batches(b: DeviceBatches, seed: int, **kw) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator()
    g.manual_seed(seed)
    return [dict(x) for x in b.epoch(4, g, **kw)]


@pytest.mark.parametrize("prefetch", [False, True])
def test_streamed_batches_equal_the_in_memory_ones(cache, prefetch):
    """The CPU gathers, and the GPU's prefetching path (a thread filling the next batch; pin=False on a CPU)."""
    _, rows, _ = cache
    keys = ("head_mask", "brain_mask")
    mem = DeviceBatches(open_slices(rows), torch.device("cpu"), mask_keys=keys)
    mapped = DeviceBatches(open_slices(rows, memory_budget_gb=TINY), torch.device("cpu"), mask_keys=keys,
                           prefetch=prefetch, pin=False)
    assert mapped.streamed and not mem.streamed
    for kw in ({}, {"drop_last": True}, {"first_n": 13}, {"shuffle": False}):
        a, b = _batches(mem, 5, **kw), _batches(mapped, 5, **kw)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            assert all(torch.equal(x[k], y[k]) for k in x)
    idx = torch.tensor([30, 2, 2, 17])
    assert all(torch.equal(mem.batch(idx)[k], mapped.batch(idx)[k]) for k in ("x",) + keys)
    # a different seed gives other batches (the comparison can fail)
    assert not torch.equal(_batches(mem, 5)[0]["x"], _batches(mapped, 6)[0]["x"])


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def test_training_and_scoring_give_the_same_results_on_both_paths(cache, tmp_path):
    from ichbench.training.score import score_fold
    from ichbench.training.train import train

    _, _, manifest = cache
    params = {"epochs": 2, "batch_size": 4, "width": 8, "hidden": 64, "latent_dim": 8}
    recs, tables = {}, {}
    for path, budget in (("memory", 4.0), ("store", TINY)):
        out = tmp_path / path
        recs[path] = train("AE", params, manifest, out, device="cpu", seed=1, progress=False,
                           memory_budget_gb=budget)
        tables[path] = score_fold(out / "model.pt", manifest, out / "s.csv", out / "m.npz", device="cpu",
                                  out_loc=out / "loc.json", out_errors=out / "e.npz", memory_budget_gb=budget)
    a = torch.load(tmp_path / "memory" / "model.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "store" / "model.pt", weights_only=True)["state"]
    assert same(a, b) and a
    pd.testing.assert_frame_equal(tables["memory"], tables["store"])
    assert (tmp_path / "memory" / "loc.json").read_text() == (tmp_path / "store" / "loc.json").read_text()
    assert recs["memory"]["train_slices"] == recs["store"]["train_slices"] == 19


def test_gathered_pages_are_released_from_resident_memory(tmp_path):
    """ru_maxrss counts the mapped pages a gather touched: the StoreArray drops them every RELEASE_BYTES."""
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc (Linux)")
    n, shape = 640, (3, 128, 128)            # 31 MB
    path = tmp_path / "a.npy"
    np.save(path, np.random.default_rng(0).integers(0, 255, (n,) + shape, dtype=np.uint8))
    arr = store.StoreArray([store.map_npy(path)], np.zeros(n, np.int64), np.arange(n), release_bytes=2**40)

    def rss_file_mb() -> float:
        line = next(x for x in status.read_text().splitlines() if x.startswith("RssFile:"))
        return int(line.split()[1]) / 1024

    before = rss_file_mb()
    for chunk in arr.chunks(64):
        chunk.sum()
    touched = rss_file_mb()
    arr.release()
    released = rss_file_mb()
    assert touched - before > 20, (before, touched)
    assert touched - released > 20, (touched, released)


def test_pack_command_packs_a_cache_made_before_the_store(tmp_path):
    from ichbench.cli import main

    write_shard(tmp_path / "shard-0", {"a": 4, "b": 3}, seed=1)
    assert not (tmp_path / "shard-0" / "store").exists()
    assert main(["pack", "--cache", str(tmp_path / "shard-0")]) in (0, None)
    images = np.load(tmp_path / "shard-0" / "store" / "images.npy")
    with np.load(tmp_path / "shard-0" / "b.npz") as z:
        assert images.shape == (7, 3, SIZE, SIZE) and np.array_equal(images[4:], z["images"])
    assert main(["pack", "--cache", str(tmp_path / "nowhere")]) not in (0, None)    # a clear error, no traceback


def test_concurrent_jobs_pack_a_missing_store_once(cache):
    """Two jobs that find the store missing at once: the second waits on the shard's lock, then finds the
    store the first packed and reads it (were the store not checked again under the lock, both would pack)."""
    import fcntl
    import subprocess
    import sys
    import time

    shard = cache[0] / "shard-0"
    shutil.rmtree(shard / "store")
    code = ("import sys; from ichbench.cache import pack; "
            "print(len(pack.ensure_packed([sys.argv[1]])), flush=True)")
    with open(shard / pack.LOCK_FILE, "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)             # both jobs find no store and wait here
        jobs = [subprocess.Popen([sys.executable, "-c", code, str(shard)], stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
        time.sleep(3.0)
        assert all(j.poll() is None for j in jobs)             # still waiting for the lock
    outs = [j.communicate(timeout=120)[0].strip() for j in jobs]
    assert all(j.returncode == 0 for j in jobs)
    assert sorted(outs) == ["0", "1"]                           # one packed, the other found it packed
    assert store.open_fold(cache[1][cache[1]["npz"].str.contains("shard-0")])[1] is None
    assert not list(shard.glob("store.partial*"))
