import multiprocessing
from pathlib import Path

import pytest

from gpustack_cli.models.store import MANIFEST, Category, Manifest, ModelFile, ModelNotFound, ModelStore, StoreError


def manifest(name: str, **extra) -> Manifest:
    return Manifest(
        name=name,
        source="test",
        categories=[Category.llm],
        engine="llama.cpp",
        files=[ModelFile(path="a.bin", size=3, sha256="0" * 64)],
        **extra,
    )


def add(store: ModelStore, name: str, replace: bool = False) -> Manifest:
    with store.staging(name) as folder:
        (folder / "a.bin").write_bytes(b"abc")
        return store.commit(folder, manifest(name), replace=replace)


def test_commit_get_list_remove(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    add(store, "one")
    add(store, "qwen2.5:0.5b")
    assert [m.name for m in store.list()] == ["one", "qwen2.5:0.5b"]
    assert store.get("qwen2.5:0.5b").files[0].path == "a.bin"
    assert (store.model_dir("one") / "a.bin").read_bytes() == b"abc"
    store.remove("one")
    assert not store.exists("one")
    with pytest.raises(ModelNotFound):
        store.get("one")
    with pytest.raises(ModelNotFound):
        store.remove("one")
    assert list((tmp_path / "tmp").iterdir()) == []


def test_existing_model_is_kept_unless_replaced(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = add(store, "m")
    with pytest.raises(StoreError, match="already exists"):
        add(store, "m")
    assert store.get("m").created == first.created
    second = add(store, "m", replace=True)
    assert store.get("m").created == second.created


def test_failed_staging_leaves_nothing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError), store.staging("half") as folder:
        (folder / "a.bin").write_bytes(b"partial")
        raise RuntimeError("download died")
    assert not store.exists("half")
    assert store.list() == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_folder_without_manifest_is_not_a_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (tmp_path / "models" / "ghost").mkdir(parents=True)
    (tmp_path / "models" / "ghost" / "a.bin").write_bytes(b"x")
    assert store.list() == []
    assert not store.exists("ghost")


def test_damaged_manifest_does_not_hide_others(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    add(store, "good")
    add(store, "bad")
    (store.model_dir("bad") / MANIFEST).write_text("{not json")
    assert [m.name for m in store.list()] == ["good"]
    with pytest.raises(StoreError, match="damaged"):
        store.get("bad")


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", "a" * 200, "a b", "a@b"])
def test_invalid_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreError, match="invalid model name"):
        ModelStore(tmp_path).model_dir(name)


def test_update_is_atomic_and_validated(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    add(store, "m")
    store.update("m", generic_proxy=True, options={"n_ctx": 512})
    assert store.get("m").generic_proxy is True
    assert store.get("m").options == {"n_ctx": 512}
    # No temporary file is left beside the manifest.
    assert {p.name for p in store.model_dir("m").iterdir()} == {"a.bin", MANIFEST}


def _commit_many(home: str, worker: int) -> None:
    store = ModelStore(Path(home))
    for i in range(10):
        with store.staging(f"w{worker}-{i}") as folder:
            (folder / "a.bin").write_bytes(b"abc")
            store.commit(folder, manifest(f"w{worker}-{i}"))
        store.update(f"w{worker}-{i}", generic_proxy=True)


def test_two_processes_at_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_commit_many, args=(str(tmp_path), w)) for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    models = ModelStore(tmp_path).list()
    assert len(models) == 20
    assert all(m.generic_proxy for m in models)


def test_what_a_killed_pull_left_is_swept_but_not_a_pull_under_way(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    left = tmp_path / "tmp" / "big.1234abcd"  # a pull killed with SIGKILL: no `finally` ran
    left.mkdir(parents=True)
    (left / "weights.bin").write_bytes(b"x" * 1000)
    (tmp_path / "tmp" / "old.rm.99").mkdir()  # a removal cut short
    assert sorted(p.name for p in store.sweep()) == ["big.1234abcd", "old.rm.99"]
    left.mkdir()
    with store.staging("busy") as running:  # the next pull sweeps too
        assert not left.exists()
        (running / "part.bin").write_bytes(b"y")
        other = ModelStore(tmp_path)  # as another process sees the store, while this pull runs
        assert other.sweep() == [] and running.is_dir()
        with other.staging("next") as second:
            assert second.is_dir() and running.is_dir()
    assert list((tmp_path / "tmp").iterdir()) == []
