"""The examples, end to end, through the scripts a user runs: make the
stand-in dataset, ingest it, build the split file, train briefly, evaluate on
held-out images. Each must learn: the bars are out of an untrained model's reach
(chance is 1/5 accuracy, ~0.25 mean IoU, ~0.5 micro-F1 at best).

The stand-in recipes are the READMEs' own: ``test_readme_recipe`` extracts
every block marked ``<!-- tested: ... -->`` (tests/readme_recipes.py), runs it
as written and checks the figure the README states, and that the clone is left
as it was."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

import crs4_cassandra as cc
from crs4_cassandra import errors
from crs4_cassandra.ingest import ingest_multilabel, ingest_segmentation
from testbed import Cluster
from tests.readme_recipes import Recipe, all_recipes, clone_state, last_metrics, run_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# One thread a process: the CI machine has two cores, and BLAS threads that
# spin against each other make a tiny model's step ten times slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(*args: str | Path, cwd: Path, timeout: int = 200) -> str:
    r = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd
    )
    assert r.returncode == 0, f"{args}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def py(script: str, *args: str | Path, cwd: Path, timeout: int = 200) -> str:
    return run(sys.executable, EXAMPLES / script, *args, cwd=cwd, timeout=timeout)


def cli(*args: str | Path, cwd: Path) -> str:
    return run(sys.executable, "-m", "crs4_cassandra.cli", *args, cwd=cwd)


def final(stdout: str, tag: str) -> dict[str, object]:
    """The parseable last line the scripts print."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(tag + " ")]
    assert lines, stdout[-2000:]
    out: dict[str, object] = json.loads(lines[-1][len(tag) + 1 :])
    return out


TRAIN = ("--workers", "0", "--lr", "1e-2", "--arch", "small", "-q")
# Evaluation reads through a DALI pipeline (crs4_cassandra.dali.reader, DALI's
# CPU decoders) where DALI is installed: the masks and npy labels of the GPU
# path, on a CPU. Training uses the DataLoader path.
try:
    DALI_CPU: tuple[str, ...] = ("--decode", "dali-cpu") if find_spec("nvidia.dali") else ()
except ModuleNotFoundError:
    DALI_CPU = ()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_imagenette_over_cassandra(tmp_path: Path, cassandra: Cluster) -> None:
    # The same scripts with --store cassandra://...: ingest, split, train, evaluate.
    src = tmp_path / "imagenette2-320"
    py(
        "imagenette/make_standin.py", src, "--classes", "5",
        "--train-per-class", "60", "--val-per-class", "12", cwd=tmp_path,
    )  # fmt: skip
    store = cassandra.url("imagenette")
    out = cli(
        "ingest", "folder", src, "--store", store, "--table", "imagenette", "-q", cwd=tmp_path
    )
    assert "wrote 360 samples" in out
    cli(
        "split", "create", "--store", store, "-m", "imagenette_metadata",
        "--mode", "original", "-o", "imagenette.split", cwd=tmp_path,
    )  # fmt: skip
    sf = cc.SplitFile.load(tmp_path / "imagenette.split")
    assert sf.store == store
    assert len(sf.uuids("train")) == 300 and len(sf.uuids("val")) == 60
    out = py(
        "imagenette/train.py", "--split-file", "imagenette.split", "--store", store,
        "--size", "32", "--epochs", "8", "--batch-size", "32", "--checkpoint", "model.pt",
        *TRAIN, cwd=tmp_path,
    )  # fmt: skip
    assert len(final(out, "FINAL")["epochs"]) == 8  # type: ignore[arg-type]
    py(
        "imagenette/evaluate.py", "--split-file", "imagenette.split", "--store", store,
        "--checkpoint", "model.pt", "--workers", "0", "--metrics-out", "metrics.json", "-q",
        cwd=tmp_path,
    )  # fmt: skip
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["samples"] == 60
    assert m["accuracy"] >= 0.6, m


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_imagenette_under_torchrun_two_processes(tmp_path: Path) -> None:
    src = tmp_path / "imagenette2-320"
    py(
        "imagenette/make_standin.py",
        src,
        "--classes",
        "5",
        "--train-per-class",
        "160",
        "--val-per-class",
        "21",
        cwd=tmp_path,
    )
    store = f"local:{tmp_path / 'store'}"
    cli(
        "ingest",
        "folder",
        src,
        "--store",
        store,
        "--table",
        "imagenette",
        "--split-file",
        "imagenette.split",
        "-q",
        cwd=tmp_path,
    )
    out = run(
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        EXAMPLES / "imagenette/train.py",
        "--split-file",
        "imagenette.split",
        "--size",
        "32",
        "--epochs",
        "10",
        "--batch-size",
        "16",
        "--metrics-out",
        "m.json",
        *TRAIN,
        cwd=tmp_path,
        timeout=280,
    )
    assert "2 process(es) on cpu" in out
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["world_size"] == 2
    # 105 val images over two ranks: every one counted once, the pads not at all.
    assert m["val"]["samples"] == 105
    assert m["accuracy"] >= 0.9, m


# The READMEs' recipes, as written.

RECIPES = all_recipes()
# The quick start's own variables, after its last line (it prints nothing).
QUICKSTART_CHECKS = """
import torch
assert epoch == 9 and len(train) == 2, (epoch, len(train))
assert labels.dtype == torch.int64 and len(jpegs) == labels.shape[0] == 128
assert all(bytes(j[:2].numpy()) == b"\\xff\\xd8" for j in jpegs)
print("QUICKSTART OK")
"""


def test_every_example_readme_has_a_tested_recipe() -> None:
    readmes = {r.readme for r in RECIPES}
    for ex in ("imagenette", "ade20k", "corel5k", "lightning", "splitfile"):
        assert f"examples/{ex}/README.md" in readmes, ex
    assert {r.name for r in RECIPES if r.readme == "README.md"} == {
        "quickstart",
        "arrays",
        "transforms",
        "one-writer-for-every-engine",
        "ray",
        "webdataset",
    }
    # The top-level README's example block is imagenette's, run once.
    top = (EXAMPLES.parent / "README.md").read_text()
    assert (
        RECIPES[[r.readme for r in RECIPES].index("examples/imagenette/README.md")].blocks[0][1]
        in top
    )


def extra_checks(r: Recipe, stdout: str, work: Path) -> None:
    """What each recipe's outputs must also hold, beyond the README's figure."""
    if r.id == "README.md:quickstart":
        assert "QUICKSTART OK" in stdout
    elif r.id == "README.md:arrays":
        from crs4_cassandra import arrays, open_store

        store = open_store(f"local:{work / 'arrays-store'}")
        assert arrays.names(store) == ["scans/volume", "slide-1"]
        slide = arrays.open(store, "slide-1")
        assert (slide[2047, 0] == 200).all() and (slide[2048, 0] == 0).all()
    elif r.id == "README.md:transforms":
        import io

        from PIL import Image

        sf = cc.SplitFile.load(work / "small.split")
        want = {"resize_shorter": 40, "center_crop": True, "jpeg_quality": 90}
        assert sf.info["transform"] == want
        store = cc.open_store(f"local:{work / 'small'}")
        for u in np.concatenate([sf.uuids("train"), sf.uuids("val")]):
            with Image.open(io.BytesIO(store.get("imagenette", bytes(u))[1])) as im:
                assert (im.format, im.size) == ("JPEG", (40, 40))
    elif r.id == "README.md:webdataset":
        # The --ray ingest of the shards wrote what the single-process one did.
        copy, ray_copy = (cc.SplitFile.load(work / f) for f in ("copy.split", "copy-ray.split"))
        assert copy.names() == ray_copy.names() == ["train"]
        assert copy.uuids("train").tobytes() == ray_copy.uuids("train").tobytes()
        a, b = (cc.open_store(f"local:{work / n}") for n in ("copy", "copy-ray"))
        for u in copy.uuids("train"):
            assert a.get("imagenette", bytes(u)) == b.get("imagenette", bytes(u))
    elif r.id == "README.md:one-writer-for-every-engine":
        assert "img/notes.png: not an image (PIL: cannot identify image file)" in stdout, stdout
    elif r.readme == "examples/imagenette/README.md":
        src = work / "imagenette-standin"
        assert sorted(p.name for p in src.iterdir()) == ["train", "val"]
        assert len(list((src / "val" / "n01440764").glob("*.JPEG"))) == 30
        assert "wrote 950 samples" in stdout
        sf = cc.SplitFile.load(work / "standin.split")
        assert len(sf.uuids("train")) == 800 and len(sf.uuids("val")) == 150
        assert last_metrics(stdout)["samples"] == 150
    elif r.readme == "examples/ade20k/README.md":
        src = work / "ade20k-standin"
        assert (src / "annotations" / "validation" / "ADE_val_00000001.png").is_file()
        assert "train=400, val=100" in stdout
        sf = cc.SplitFile.load(work / "ade.split")
        assert sf.label_type == "blob"
        assert sf.classes == ["background", "circle", "square", "triangle"]
        assert last_metrics(stdout)["samples"] == 100
        if DALI_CPU:
            # The masks through a DALI pipeline (DALI's CPU decoders).
            out = py(
                "ade20k/evaluate.py",
                "--split-file",
                "ade.split",
                "--checkpoint",
                "small.pt",
                "--workers",
                "0",
                "-q",
                *DALI_CPU,
                cwd=work,
            )
            m = final(out, "METRICS")
            assert m["samples"] == 100 and m["mean_iou"] >= 0.5, m  # type: ignore[operator]
    elif r.readme == "examples/corel5k/README.md":
        assert {p.name for p in (work / "corel5k-standin").iterdir()} == {
            "images", "train.json", "test.json"
        }  # fmt: skip
        # The split file again, from the metadata: the label files' own split,
        # and the classes recovered from the label names.
        out = cli(
            "split",
            "create",
            "--store",
            "local:store",
            "-m",
            "corel5k_metadata",
            "--mode",
            "original",
            "-o",
            "again.split",
            cwd=work,
        )
        assert "train=600, test=150" in out
        sf = cc.SplitFile.load(work / "again.split")
        assert sf.classes == sorted(["circle", "square", "triangle", "cross", "ring"])
        assert last_metrics(stdout)["samples"] == 150
        if DALI_CPU:
            # The npy labels through a DALI pipeline (DALI's CPU decoders).
            out = py(
                "corel5k/evaluate.py",
                "--split-file",
                "again.split",
                "--checkpoint",
                "small.pt",
                "--split",
                "test",
                "--workers",
                "0",
                "-q",
                *DALI_CPU,
                cwd=work,
            )
            m = final(out, "METRICS")
            assert m["samples"] == 150 and m["micro_f1"] >= 0.8, m  # type: ignore[operator]
    elif r.readme == "examples/lightning/README.md":
        assert (work / "runs" / "epoch=5-step=140.ckpt").is_file()
        m = last_metrics(stdout)
        assert m["val_samples"] == 150
    elif r.readme == "examples/splitfile/README.md":
        sf = cc.SplitFile.load(work / "standin-8-2.split")
        val = sf.uuids("val")
        assert len(sf.uuids("train")) == 760 and len(val) == 190


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("recipe", RECIPES, ids=[r.id for r in RECIPES])
def test_readme_recipe(recipe: Recipe, tmp_path: Path) -> None:
    import shutil
    import tempfile

    before = clone_state()
    # Ray keeps Unix sockets under $TMPDIR/ray, and a socket path must fit in
    # 107 bytes: the recipes' TMPDIR, deep under pytest's, does not.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        stdout, work = run_recipe(
            recipe,
            tmp_path,
            Path(sys.executable),
            epilogue=QUICKSTART_CHECKS if recipe.name == "quickstart" else "",
            env={"RAY_TMPDIR": ray_tmp},
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    extra_checks(recipe, stdout, work)
    assert clone_state() == before, "the recipe wrote into the clone"


# The ingest layouts, on their own.


def write_jpeg(path: Path, seed: int) -> None:
    from PIL import Image

    rgb = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG")


@pytest.mark.timeout(60)
def test_ingest_segmentation_pairs_masks_and_skips_orphans(tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "ade"
    for split, names in (("training", ["a", "b", "orphan"]), ("validation", ["c"])):
        for k, name in enumerate(names):
            write_jpeg(src / "images" / split / f"{name}.jpg", k)
            if name != "orphan":
                mask = np.full((8, 8), k + 1, np.uint8)
                (src / "annotations" / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(src / "annotations" / split / f"{name}.png")
    (src / "annotations" / "training" / "b.png").write_bytes(b"not a png")
    url = f"local:{tmp_path / 'store'}"
    report = ingest_segmentation(src, url, "seg", classes=["bg", "x", "y"], progress=False)
    assert report.written == 2
    assert sorted(p for p, _ in report.skipped) == [
        "images/training/b.jpg",
        "images/training/orphan.jpg",
    ]
    sf = report.split_file
    assert sf is not None and sf.names() == ["train", "val"] and sf.classes == ["bg", "x", "y"]
    ds = cc.ShardedDataset.from_split(url, sf, "train", 1)
    (b,) = list(ds)
    from torchvision.io import decode_png

    assert decode_png(b.label_samples()[0]).unique().tolist() == [1]
    with pytest.raises(errors.InvalidArgumentError, match="annotations"):
        ingest_segmentation(tmp_path / "ade" / "images", url, "seg2", progress=False)


@pytest.mark.timeout(60)
def test_ingest_multilabel_writes_npy_multihot(tmp_path: Path) -> None:
    src = tmp_path / "corel"
    for i in range(3):
        write_jpeg(src / "images" / f"{i}.jpeg", i)
    doc = {
        "labels": ["sky", "sun", "tree"],
        "samples": [
            {"image_name": "0.jpeg", "image_labels": ["tree", "sky"]},
            {"image_name": "1.jpeg", "image_labels": ["sun"]},
            {"image_name": "missing.jpeg", "image_labels": ["sun"]},
        ],
    }
    (src / "train.json").write_text(json.dumps(doc))
    (src / "test.json").write_text(
        json.dumps({"samples": [{"image_name": "2.jpeg", "image_labels": ["sky"]}]})
    )
    url = f"local:{tmp_path / 'store'}"
    report = ingest_multilabel(src, url, "ml", progress=False)
    assert report.written == 3 and [p for p, _ in report.skipped] == ["images/missing.jpeg"]
    sf = report.split_file
    assert sf is not None and sf.classes == ["sky", "sun", "tree"]
    assert sf.names() == ["test", "train"] or sf.names() == ["train", "test"]
    ds = cc.ShardedDataset.from_split(url, sf, "train", 2, shuffle=False)
    (b,) = list(ds)
    vectors = {
        tuple(np.load(io.BytesIO(lab.numpy().tobytes())).tolist()) for lab in b.label_samples()
    }
    assert vectors == {(1, 0, 1), (0, 1, 0)}
    rows = cc.open_store(url).scan_metadata("ml_metadata")
    assert sorted(r[2] or "" for r in rows) == ["sky", "sun", "tree|sky"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_learns(tmp_path: Path) -> None:
    # What `make demo` runs once the extension is built.
    out = run(sys.executable, "-m", "crs4_cassandra.demo", "--workdir", tmp_path, cwd=tmp_path)
    assert "raw read:" in out
    line = [ln for ln in out.splitlines() if ln.startswith("val accuracy:")][-1]
    assert float(line.split()[2]) >= 0.8, out[-2000:]
