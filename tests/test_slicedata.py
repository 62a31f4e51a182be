import numpy as np
import pyarrow.parquet as pq
import pytest

from latentstore.errors import StoreError
from latentstore.slicedata import SliceStream, holdout_keys, is_holdout, read_slices
from latentstore.store import Store
from latentstore.train import default_run_dir
from tiny_store import make_store


def split_parts(root):
    """Rewrite a tiny store's single part as one part per scan, as ingest writes them."""
    t = pq.read_table(root / "slices" / "part.parquet")
    (root / "slices" / "part.parquet").unlink()
    for scan in sorted(set(t.column("scan_id").to_pylist())):
        import pyarrow.compute as pc
        pq.write_table(t.filter(pc.equal(t["scan_id"], scan)), root / "slices" / f"{scan}.parquet")
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return split_parts(make_store(tmp_path_factory.mktemp("s"), n_scans=12, levels=3))


def _ids(images):
    return [hash(im.tobytes()) for im in images]


@pytest.mark.parametrize("window", [5, 10_000])
def test_an_epoch_is_a_permutation_of_the_split_and_batches_depend_on_seed_and_step_only(store, window):
    stream = SliceStream(store, "all", window=window)
    everything = read_slices(store, "all")
    n = len(stream)
    assert n == len(everything) == 36
    epoch = np.concatenate([stream.batch(s, 4, seed=7) for s in range(n // 4)])
    assert sorted(_ids(epoch)) == sorted(_ids(everything.images))  # every slice once
    fresh = SliceStream(store, "all", window=window)
    assert np.array_equal(fresh.batch(5, 4, seed=7), stream.batch(5, 4, seed=7))  # resume = same batch
    assert not np.array_equal(fresh.batch(0, 4, seed=8), stream.batch(0, 4, seed=7))
    across = stream.batch(8, 5, seed=7)  # positions 40-44 cross into the second epoch
    assert across.shape == (5, 96, 96)


def test_only_one_window_of_pixels_is_held(store):
    stream = SliceStream(store, "all", window=5)
    for s in range(20):
        stream.batch(s, 3, seed=0)
        assert sum(len(b) for b in stream._cache.values()) <= 5 + 3  # window + at most one part over it


def test_a_split_that_fits_one_window_is_read_once_over_many_epochs(store, monkeypatch):
    stream = SliceStream(store, "all", window=10_000)
    reads = []
    real = stream._read
    monkeypatch.setattr(stream, "_read", lambda path, columns: reads.append(path) or real(path, columns))
    first = [stream.batch(s, 4, seed=3) for s in range(30)]  # 120 positions: over three epochs
    assert len(reads) == len(stream.parts)  # each part once, not once per epoch
    fresh = SliceStream(store, "all", window=10_000)
    assert all(np.array_equal(b, fresh.batch(s, 4, seed=3)) for s, b in enumerate(first))
    small = SliceStream(store, "all", window=5)  # windows smaller than the split keep nothing
    small.batch(0, 3, seed=0)
    assert small._parts == {}


def test_split_is_by_patient_and_holdout_and_train_are_disjoint(store):
    train, held = read_slices(store, "train", 0.3), read_slices(store, "holdout", 0.3)
    assert set(train.patient_key).isdisjoint(held.patient_key)
    assert all(is_holdout(k, 0.3) for k in held.patient_key)
    # a store too small for the hash rule still holds one patient out, the same one every time
    keys = [f"k{i}" for i in range(20)]
    few = holdout_keys(keys, 1e-6)
    assert len(few) == 1 and few == holdout_keys(reversed(keys), 1e-6) and holdout_keys(["only"], 1e-6) == set()
    assert holdout_keys(keys, 0.5) == {k for k in keys if is_holdout(k, 0.5)}
    assert len(SliceStream(store, "train", 0.3)) == len(train)
    assert SliceStream(store, "train", 0.3).data_hash != SliceStream(store, "all").data_hash
    assert len(SliceStream(store, "holdout", 1e-9)) == 3  # one patient (3 levels) held out
    single = make_store(store.parent / "one", n_scans=1, levels=3)
    with pytest.raises(StoreError, match="no holdout slices"):
        SliceStream(single, "holdout", 0.1)


def test_runs_live_in_the_store(store):
    assert default_run_dir(Store(str(store)), "small") == store / "runs" / "train-small"
