"""The bounded local cache of remote shards (cvdist/data/remote_cache.py) against a real local
HTTP server: cached second reads, LRU eviction that spares open shards, no half shard after a
truncated or killed download, counted retries, redacted one-line errors, pipe: sources, and a
recipe training on http:// shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cvdist.config import ConfigError, validate
from cvdist.config_loading import load_config
from cvdist.data.remote_cache import RemoteCache
from cvdist.data.stream import ShardSet, ShardStream, read_shard_samples
from cvdist.tracking.records import read_metrics
from tests.helpers.recipes import REPO, clean_env, run_recipe
from tests.helpers.shard_server import ShardServer
from tests.helpers.shards import png_bytes, write_tar
from tests.test_stream import plain_decoder

SAMPLES_PER_SHARD = 8


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    for shard in range(4):
        write_tar(root / f"train-{shard:06d}.tar",
                  [(f"s{shard}-{i:03d}", {"png": png_bytes(shard * 50 + i), "cls": str(i % 4).encode()})
                   for i in range(SAMPLES_PER_SHARD)])
    server = ShardServer(root)
    yield server
    server.close()


def make_cache(tmp_path: Path, **overrides) -> RemoteCache:
    options = dict(directory=str(tmp_path / "cache" / "remote-shards"), retries=3, timeout_s=5.0, backoff_s=0.01)
    options.update(overrides)
    return RemoteCache(**options)


def read(url: str, cache: RemoteCache) -> tuple[list[dict], list[str]]:
    errors: list[str] = []
    return list(read_shard_samples(url, errors, remote=cache)), errors


def cached_files(cache: RemoteCache, suffix: str) -> list[Path]:
    return sorted(Path(cache.directory).glob(f"*{suffix}"))


def test_a_second_read_comes_from_the_cache(served, tmp_path):
    cache = make_cache(tmp_path)
    url = f"{served.base}/train-000000.tar"
    first, errors = read(url, cache)
    second, _ = read(url, cache)
    assert not errors and len(first) == SAMPLES_PER_SHARD
    assert [s["png"] for s in first] == [s["png"] for s in second]
    assert served.requests["train-000000.tar"] == 1
    assert len(cached_files(cache, ".tar")) == 1 and not cached_files(cache, ".part")


def test_the_size_limit_evicts_least_recently_used_shards(served, tmp_path):
    size = (served.root / "train-000000.tar").stat().st_size
    cache = make_cache(tmp_path, limit_bytes=int(2.5 * size))
    urls = [f"{served.base}/train-{i:06d}.tar" for i in range(4)]
    for url in urls[:3]:
        read(url, cache)
        time.sleep(0.02)  # distinct mtimes: the LRU clock
    assert not Path(cache.paths(urls[0])[0]).exists()  # oldest gone, newest kept
    assert Path(cache.paths(urls[1])[0]).exists() and Path(cache.paths(urls[2])[0]).exists()
    read(urls[1], cache)  # used again: now the newest
    time.sleep(0.02)
    read(urls[3], cache)
    assert Path(cache.paths(urls[1])[0]).exists() and not Path(cache.paths(urls[2])[0]).exists()
    assert sum(p.stat().st_size for p in cached_files(cache, ".tar")) <= cache.limit_bytes
    assert served.requests["train-000001.tar"] == 1


def test_a_shard_a_reader_has_open_is_never_evicted(served, tmp_path):
    size = (served.root / "train-000000.tar").stat().st_size
    cache = make_cache(tmp_path, limit_bytes=int(1.5 * size))
    held = read_shard_samples(f"{served.base}/train-000000.tar", [], remote=cache)
    first = next(held)  # shard 0 is open (its lock held shared)
    read(f"{served.base}/train-000001.tar", cache)
    assert Path(cache.paths(f"{served.base}/train-000000.tar")[0]).exists()
    rest = list(held)
    assert len(rest) + 1 == SAMPLES_PER_SHARD and first["__key__"] == "s0-000"
    read(f"{served.base}/train-000002.tar", cache)  # closed now: evicted
    assert not Path(cache.paths(f"{served.base}/train-000000.tar")[0]).exists()


def test_a_truncated_download_leaves_nothing_trusted(served, tmp_path):
    cache = make_cache(tmp_path, retries=0)
    url = f"{served.base}/train-000001.tar"
    served.faults["train-000001.tar"] = ["truncate"]
    samples, errors = read(url, cache)
    assert samples == [] and len(errors) == 1 and "train-000001.tar" in errors[0]
    assert not cached_files(cache, ".tar") and not cached_files(cache, ".part")
    again, errors = read(url, cache)
    assert not errors and len(again) == SAMPLES_PER_SHARD and served.requests["train-000001.tar"] == 2


def test_a_cached_shard_found_damaged_is_fetched_again(served, tmp_path):
    cache = make_cache(tmp_path)
    url = f"{served.base}/train-000001.tar"
    served.faults["train-000001.tar"] = ["short"]  # cut short with no Content-Length: cached, then found damaged
    samples, errors = read(url, cache)
    assert len(samples) < SAMPLES_PER_SHARD and len(errors) == 1 and "CorruptShard" in errors[0]
    assert not cache.paths(url)[0].exists()
    again, errors = read(url, cache)
    assert not errors and len(again) == SAMPLES_PER_SHARD and served.requests["train-000001.tar"] == 2


def test_a_reader_killed_mid_download_leaves_no_shard_and_the_next_read_refetches(served, tmp_path):
    cache = make_cache(tmp_path)
    url = f"{served.base}/train-000002.tar"
    served.faults["train-000002.tar"] = ["stall"]  # half the body, then silence
    code = ("import sys; from cvdist.data.remote_cache import RemoteCache; "
            f"RemoteCache(directory={cache.directory!r}).open({url!r}).__enter__()")
    reader = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=clean_env())
    part = cache.paths(url)[1]
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert part.exists(), "the reader never started its download"
    os.kill(reader.pid, signal.SIGKILL)
    reader.wait()
    assert not cache.paths(url)[0].exists()  # only the .part, which nothing trusts
    samples, errors = read(url, cache)  # a fresh process' first use cleans and re-downloads
    assert not errors and len(samples) == SAMPLES_PER_SHARD and not part.exists()
    assert served.requests["train-000002.tar"] == 2


def test_concurrent_readers_of_one_shard_download_it_once(served, tmp_path):
    cache = make_cache(tmp_path)
    url = f"{served.base}/train-000003.tar"
    served.faults["train-000003.tar"] = ["slow"]
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(len(read(url, cache)[0]))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [SAMPLES_PER_SHARD] * 4 and served.requests["train-000003.tar"] == 1


def test_concurrent_processes_share_one_download(served, tmp_path):
    cache = make_cache(tmp_path)
    url = f"{served.base}/train-000003.tar"
    served.faults["train-000003.tar"] = ["slow"]
    code = ("from cvdist.data.remote_cache import RemoteCache\nfrom cvdist.data.tar_samples import iter_samples\n"
            f"with RemoteCache(directory={cache.directory!r}).open({url!r}) as stream:\n"
            "    print(len(list(iter_samples(stream))))")
    readers = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                                text=True) for _ in range(3)]
    outputs = [reader.communicate(timeout=60)[0].strip() for reader in readers]
    assert outputs == [str(SAMPLES_PER_SHARD)] * 3 and served.requests["train-000003.tar"] == 1


def test_transient_errors_are_retried_and_counted_in_the_metrics(served, tmp_path, capsys):
    cache = make_cache(tmp_path)
    served.faults["train-000000.tar"] = ["503", "truncate"]
    stream = ShardStream(sources=[ShardSet(urls=[f"{served.base}/train-000000.tar"])], rank=0, world_size=1,
                         num_workers=0, batch_size=4, seed=0, decoder=plain_decoder(), shuffle_buffer=0,
                         num_samples=SAMPLES_PER_SHARD, remote=cache)
    batches = list(stream.iterate(epoch=0))
    assert len(batches) == 2
    assert stream.metrics() == {"data/corrupt_skipped": 0.0, "data/remote_retries": 2.0}
    assert served.requests["train-000000.tar"] == 3
    assert capsys.readouterr().out.count("retrying remote shard") == 2


def test_a_stalled_server_times_out_and_the_retry_succeeds(served, tmp_path):
    cache = make_cache(tmp_path, timeout_s=0.5, retries=1)
    served.faults["train-000000.tar"] = ["stall"]  # half the body, then silence: never a hang
    start = time.monotonic()
    samples, errors = read(f"{served.base}/train-000000.tar", cache)
    assert not errors and len(samples) == SAMPLES_PER_SHARD and cache.num_retries == 1
    assert time.monotonic() - start < 10


def test_retries_run_out_into_one_counted_corrupt_shard(served, tmp_path):
    cache = make_cache(tmp_path, retries=2)
    served.faults["train-000000.tar"] = ["503"] * 3
    samples, errors = read(f"{served.base}/train-000000.tar", cache)
    assert samples == [] and len(errors) == 1 and "HTTP 503" in errors[0] and "after 3 attempts" in errors[0]
    assert cache.num_retries == 2


def test_a_missing_shard_is_one_redacted_line_and_not_retried(served, tmp_path):
    cache = make_cache(tmp_path)
    port = served.httpd.server_address[1]
    url = f"http://alice:hunter2@127.0.0.1:{port}/missing-000000.tar?X-Amz-Signature=s3cr3t"
    samples, errors = read(url, cache)
    assert samples == [] and len(errors) == 1 and "\n" not in errors[0]
    assert "HTTP 404" in errors[0] and f"127.0.0.1:{port}/missing-000000.tar" in errors[0]
    assert "hunter2" not in errors[0] and "s3cr3t" not in errors[0] and "alice" not in errors[0]
    assert served.requests["missing-000000.tar"] == 1 and cache.num_retries == 0
    assert served.authorizations == ["Basic YWxpY2U6aHVudGVyMg=="]  # sent as a header, not in the request line


def test_pipe_sources_are_cached_and_failures_retried(served, tmp_path):
    cache = make_cache(tmp_path, retries=1)
    calls = tmp_path / "calls"
    url = f"pipe:echo x >> {calls} && cat {served.root / 'train-000000.tar'}"
    assert len(read(url, cache)[0]) == SAMPLES_PER_SHARD and len(read(url, cache)[0]) == SAMPLES_PER_SHARD
    assert calls.read_text().count("x") == 1
    samples, errors = read("pipe:exit 3", cache)
    assert samples == [] and "status 3" in errors[0] and cache.num_retries == 1


@pytest.mark.parametrize("override,words", [("data.cache_limit_gb=0", "data.cache_limit_gb=0.0 must be > 0"),
                                            ("data.remote_retries=-1", "data.remote_retries=-1 must be >= 0"),
                                            ("data.remote_timeout_s=0", "data.remote_timeout_s=0.0 must be > 0")])
def test_config_limits_are_checked(override, words):
    with pytest.raises(ConfigError, match=words):
        validate(load_config(overrides=[override]), world_size=1)


def test_the_supervised_recipe_trains_on_http_shards(served, tmp_path):
    write_tar(tmp_path / "test-000000.tar", [(f"t{i}", {"png": png_bytes(i), "cls": str(i % 4).encode()})
                                             for i in range(16)])
    cache_dir = tmp_path / "cache"
    served.faults["train-000001.tar"] = ["503"]  # retried in a DataLoader worker, counted in the metrics
    args = [f"data.train_shards=['{served.base}/train-{{000000..000003}}.tar']", "data.num_samples=32",
            f"data.eval_shards={tmp_path}/test-000000.tar", f"data.cache_dir={cache_dir}", "data.image_size=8",
            "data.global_batch_size=8", "data.eval_batch_size=16", "data.num_workers=2", "model.name=tiny_cnn", "model.num_classes=4",
            "tracking.wandb_mode=disabled", "tracking.log_every_steps=1", "train.max_steps=4",
            f"output_dir={tmp_path}", "name=remote"]
    run_recipe(args, timeout=240)
    assert sorted(served.requests.values()) == [1, 1, 1, 2]
    assert len(list((cache_dir / "remote-shards").glob("*.tar"))) == 4
    rows = [row for row in read_metrics(tmp_path / "remote") if "data/remote_retries" in row]
    assert rows and rows[-1]["data/remote_retries"] == 1 and rows[-1]["data/corrupt_skipped"] == 0


def test_a_remote_manifest_gives_counts_and_a_recipe_trains_without_num_samples(tmp_path):
    from cvdist.data.builtin_shards import BuiltinSpec, builtin_shard_dir
    from cvdist.data.manifest import ManifestError
    from cvdist.data.shard_sources import resolve_source

    spec = BuiltinSpec(dataset="synthetic", root="", num_classes=10, in_channels=1, num_train_samples=256,
                       num_eval_samples=64, seed=0)
    shards = builtin_shard_dir(spec, cache_dir=tmp_path / "written", log=lambda *_: None)
    server = ShardServer(shards)
    try:
        url = f"{server.base}/manifest.json"
        cache = make_cache(tmp_path)
        source, manifest = resolve_source(url, split="train", num_classes=10, remote=cache)
        assert sum(source.shard_sizes) == 256 and sum(source.class_counts) == 256 and manifest.num_classes == 10
        assert all(u.startswith(server.base + "/train-") for u in source.urls)
        with pytest.raises(ValueError, match="lists 10 classes but model.num_classes=4"):
            resolve_source(url, split="train", num_classes=4, remote=cache)
        server.faults["manifest.json"] = ["503"]  # fetched again each time (never cached), retried
        resolve_source(url, split="train", num_classes=10, remote=cache)
        assert cache.num_retries == 1

        args = [f"data.train_shards=['{url}']", f"data.cache_dir={tmp_path / 'cache'}", "model.name=tiny_cnn",
                "data.global_batch_size=32", "tracking.wandb_mode=disabled", "train.max_steps=3",
                f"output_dir={tmp_path}", "name=remote-manifest"]  # evaluation: the manifest's test split
        assert "done: step 3" in run_recipe(args, timeout=240).stdout
    finally:
        server.close()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"format": "cvdist-shards/1", "splits": "x"')
    bad = ShardServer(tmp_path / "bad")
    try:
        with pytest.raises(ManifestError, match="is not valid JSON"):
            resolve_source(f"{bad.base}/manifest.json", split="train", num_classes=10, remote=make_cache(tmp_path))
    finally:
        bad.close()
