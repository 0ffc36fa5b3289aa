from dkdm.bench.cache import bench_cache, markdown



def test_bench_cache_measures_every_format(tiny_teacher, tmp_path):
    res = bench_cache(teacher=str(tiny_teacher), trajectories=8, batch_size=4, steps=2, shard_size=4, read_batch=4,
                      shuffle_buffer=8, distill_steps=2, repeats=1, device="cpu", workdir=str(tmp_path), log=lambda *_: None)
    assert set(res["formats"]) == {"wds", "wds-gz", "zarr"}
    for f, r in res["formats"].items():
        assert r["generate_records_per_s"] > 0 and r["read_records_per_s"] > 0 and r["generate_over_bare"] > 0
        assert 0 < r["write_share"] < 1
        assert r["raw_fp32_bytes_per_record"] == 4 * 2 * 256
    fm = res["formats"]
    # blocks of 4 fp16 records: tar headers (3 x 512 B per block) still show; gzip and zarr must remove them
    assert 0.5 < fm["wds"]["bytes_over_raw_fp32"] < 1.5 and fm["wds-gz"]["bytes_per_record"] < fm["wds"]["bytes_per_record"]
    assert fm["zarr"]["bytes_over_raw_fp32"] <= 0.5
    assert "| zarr |" in markdown(res)
    assert list(tmp_path.iterdir()) == []  # caches went to a temp dir that is gone
