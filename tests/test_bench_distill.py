from conftest import run_cli


def test_bench_distill_writes_its_section_only(tiny_teacher, tiny_cache, tmp_path):
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\n## Cache\n\nnumbers from the cache helper\n\n## Distill\n\nold numbers\n")
    p = run_cli("bench", "distill", "--cache", tiny_cache, "--teacher", tiny_teacher, "--recipe", "tests/tiny_demo.toml",
                "--steps", 2, "--rounds", 1, "--batch-size", 4, "--num-workers", 0, "--device", "cpu", "--md", md)
    assert p.returncode == 0, p.stderr[-2000:]
    text = md.read_text()
    assert "numbers from the cache helper" in text and "old numbers" not in text
    assert text.count("## Distill") == 1 and "| cache (webdataset shards" in text and "vs in-memory" in text
    ratio = float(p.stdout.split("cache/in-memory ")[1].split(",")[0])
    assert ratio > 0


def test_bench_distill_bad_cache_is_one_line(tmp_path, tiny_teacher):
    p = run_cli("bench", "distill", "--cache", tmp_path / "nope", "--teacher", tiny_teacher, "--md", tmp_path / "b.md")
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
