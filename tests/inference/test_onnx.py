"""protloc export: a valid ONNX file whose probabilities match torch's through `predict --engine onnx`."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest

from protloc.cli import main
from protloc.labels import HPA10
from protloc.runs import load_config, save_config


@pytest.fixture(scope="module")
def exported_run(untrained_run):
    """A run exported to its default place, RUN/model.onnx."""
    # Spread probabilities, so that they differ between images.
    run_dir = untrained_run(spread=30)
    assert main(["export", str(run_dir)]) == 0
    return run_dir


def probabilities(run_dir, data, out, *engine_args) -> pd.DataFrame:
    args = ["predict", str(run_dir), str(data), "--probabilities", "--out", str(out), "--workers", "0", "--precision", "fp32"]
    assert main([*args, *engine_args]) == 0
    return pd.read_csv(out, dtype={"Image": str})


def test_export_writes_a_valid_graph_with_the_run_config(exported_run):
    graph = onnx.load(str(exported_run / "model.onnx"))
    onnx.checker.check_model(graph)
    assert [i.name for i in graph.graph.input] == ["image"] and [o.name for o in graph.graph.output] == ["probabilities"]
    batch_axis = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # dynamic
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    assert json.loads(metadata["protloc_config"])["label_names"] == list(HPA10.names)


def test_onnx_and_torch_engines_agree_on_demo_images(exported_run, demo_data, tmp_path):
    torch_probs = probabilities(exported_run, demo_data, tmp_path / "torch.csv")
    onnx_probs = probabilities(exported_run, demo_data, tmp_path / "onnx.csv", "--engine", "onnx")
    assert onnx_probs["Image"].tolist() == torch_probs["Image"].tolist() and len(onnx_probs) == 16
    difference = np.abs(onnx_probs[list(HPA10.names)].to_numpy() - torch_probs[list(HPA10.names)].to_numpy())
    assert difference.max() <= 1e-4
    assert torch_probs[list(HPA10.names)].to_numpy().std(axis=0).min() > 1e-3  # a real comparison, not constants


def test_export_to_a_named_file_and_api_onnx_engine(exported_run, demo_data, tmp_path):
    import protloc

    target = tmp_path / "elsewhere" / "net.onnx"
    assert main(["export", str(exported_run), "--out", str(target), "--opset", "18"]) == 0
    images = sorted((demo_data / "test").glob("*.png"))[:5]
    from_onnx = protloc.load(exported_run, engine="onnx", onnx=target).predict_proba(images)
    from_torch = protloc.load(exported_run, precision="fp32").predict_proba(images)
    np.testing.assert_allclose(from_onnx, from_torch, atol=1e-4)
    assert not list(target.parent.glob("*.part"))  # written atomically, no leftovers


def test_missing_or_foreign_onnx_file_is_a_clear_error(exported_run, demo_data, tmp_path, capsys):
    out = tmp_path / "out.csv"
    assert main(["predict", str(exported_run), str(demo_data), "--out", str(out), "--engine", "onnx",
                 "--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "protloc export" in capsys.readouterr().err
    # The same weights at another image size: the exported graph no longer fits the run.
    other = tmp_path / "other-run"
    shutil.copytree(exported_run, other)
    config = load_config(other)
    config.image_size = 48
    save_config(other, config)
    assert main(["predict", str(other), str(demo_data), "--out", str(out), "--engine", "onnx",
                 "--onnx", str(exported_run / "model.onnx")]) == 2
    assert "the run expects" in capsys.readouterr().err
    assert not out.exists()
    # The run's own model.onnx no longer fits: the engine exports one that does into the cache, not over it.
    assert main(["predict", str(other), str(demo_data), "--out", str(out), "--engine", "onnx", "--workers", "0"]) == 0
    assert "exporting" in capsys.readouterr().err
    assert (other / "model.onnx").read_bytes() == (exported_run / "model.onnx").read_bytes()


def test_evaluate_with_the_onnx_engine_matches_torch(exported_run, demo_data, tmp_path):
    import json

    for engine in ("torch", "onnx"):
        assert main(["evaluate", str(exported_run), str(demo_data), "--out", str(tmp_path / engine), "--engine", engine,
                     "--workers", "0", "--precision", "fp32"]) == 0
    columns = [f"p_{name}" for name in HPA10.names]
    torch_probs, onnx_probs = (pd.read_csv(tmp_path / engine / "predictions.csv")[columns].to_numpy()
                               for engine in ("torch", "onnx"))
    assert torch_probs.shape == (96, 10) and np.abs(onnx_probs - torch_probs).max() <= 1e-4
    assert json.loads((tmp_path / "onnx" / "metrics.json").read_text())["images"] == 96


@pytest.mark.parametrize("setting", [["--device", "cuda"], ["--precision", "bf16"]])
def test_the_onnx_engine_refuses_gpu_and_low_precision_settings(exported_run, demo_data, tmp_path, setting, capsys):
    out = tmp_path / "out.csv"
    assert main(["predict", str(exported_run), str(demo_data), "--out", str(out), "--engine", "onnx", *setting]) == 2
    assert "--engine onnx runs on the CPU in fp32" in capsys.readouterr().err
    assert not out.exists()


def test_default_cpu_prediction_is_onnx_runtime_within_1e4_of_torch_fp32(untrained_run, demo_data, tmp_path, capsys,
                                                                          monkeypatch):
    """The default backbone, untrained: `predict` with no engine options exports the model into the cache folder on
    first use (the run folder is left alone) and gives ONNX Runtime's fp32 probabilities, within 1e-4 of --engine
    onnx and of torch in fp32."""
    monkeypatch.setenv("PROTLOC_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = untrained_run(tmp_path / "run", backbone="efficientnet_lite0", image_size=64, spread=3)
    before = sorted(path.name for path in run_dir.iterdir())
    default = main(["predict", str(run_dir), str(demo_data), "--probabilities", "--out", str(tmp_path / "default.csv"),
                    "--workers", "0"])
    assert default == 0 and "exporting" in capsys.readouterr().err
    assert sorted(path.name for path in run_dir.iterdir()) == before
    assert len(list((tmp_path / "cache" / "onnx-v1").glob("*.onnx"))) == 1
    columns = list(HPA10.names)
    auto = pd.read_csv(tmp_path / "default.csv", dtype={"Image": str})[columns].to_numpy()
    onnx_probs = probabilities(run_dir, demo_data, tmp_path / "onnx.csv", "--engine", "onnx")[columns].to_numpy()
    torch_probs = probabilities(run_dir, demo_data, tmp_path / "torch.csv", "--engine", "torch")[columns].to_numpy()
    assert "exporting" not in capsys.readouterr().err  # the cached export was fresh
    assert torch_probs.std(axis=0).min() > 1e-3  # a real comparison, not constants
    assert np.abs(auto - onnx_probs).max() <= 1e-4 and np.abs(auto - torch_probs).max() <= 1e-4
    import protloc

    assert protloc.load(run_dir).engine_name == "onnx" and protloc.load(run_dir, precision="bf16").engine_name == "torch"


def test_the_cached_export_follows_new_weights(untrained_run, demo_data, tmp_path, monkeypatch):
    import protloc
    from safetensors.torch import load_file, save_file

    from protloc.files import write_digest

    monkeypatch.setenv("PROTLOC_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = untrained_run(tmp_path / "run", spread=30)
    images = sorted((demo_data / "test").glob("*.png"))[:4]
    before = protloc.load(run_dir).predict_proba(images)
    weights = load_file(str(run_dir / "model.safetensors"))
    save_file({name: value * 1.5 if name.startswith("head") else value for name, value in weights.items()},
              str(run_dir / "model.safetensors"))
    write_digest(run_dir / "model.safetensors")  # as save_run writes it beside new weights
    after = protloc.load(run_dir).predict_proba(images)
    assert np.abs(after - before).max() > 1e-3
    target = tmp_path / "cache" / "onnx-v1"
    assert len(list(target.glob("*.onnx"))) == 2  # one export per set of weights
    np.testing.assert_allclose(after, protloc.load(run_dir, engine="torch", precision="fp32").predict_proba(images),
                               atol=1e-4)
