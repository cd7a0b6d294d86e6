"""Outlier scores: the distance, its threshold, the stored description (safetensors; a damaged one is a clear
error), and the score in every output that has predictions (Python API, predict --probabilities, ONNX, K-fold)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import protloc
from protloc.cli import main
from protloc.errors import ProtlocError
from protloc.inference.outliers import (EnsembleScore, MahalanobisScore, describe_features, load_description,
                                        outlier_threshold, save_description)
from protloc.runs import OUTLIER_FILE, TrainingOutcome, fold_dir, load_config, read_weight_shapes, write_ensemble
from tests.conftest import outlier_features


def correlated_cloud(rng, count: int, shift: float = 0.0, width: int = 12) -> np.ndarray:
    """Features (count, width) with correlated dimensions, as pooled CNN features are."""
    mixing = np.random.default_rng(7).normal(size=(width, width))
    return (rng.normal(size=(count, width)) + shift) @ mixing


def two_part_cloud(rng, count: int, shift: float = 0.0) -> np.ndarray:
    """Features of two parts side by side, (count, 12 + 5), as the pooled features and one stage are."""
    return np.concatenate([correlated_cloud(rng, count, shift), correlated_cloud(rng, count, shift, width=5)], axis=1)


def test_the_score_is_the_mean_of_the_parts_mahalanobis_distances_over_their_validation_medians():
    from scipy.spatial.distance import mahalanobis

    rng = np.random.default_rng(0)
    training, validation = two_part_cloud(rng, 400), two_part_cloud(rng, 100)
    description = describe_features(training, [12, 5])
    description.calibrate(validation)
    parts = [(0, 12), (12, 17)]
    for (start, stop), mean, precision in zip(parts, description.means, description.precisions):
        np.testing.assert_allclose(mean, training[:, start:stop].mean(axis=0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.linalg.inv(precision), np.cov(training[:, start:stop].T), rtol=0.2, atol=0.5)

    def distances(rows, part):
        (start, stop), mean, precision = parts[part], description.means[part], description.precisions[part]
        return np.array([mahalanobis(row[start:stop], mean, precision) for row in rows])

    medians = [np.median(distances(validation, part)) for part in range(2)]
    np.testing.assert_allclose(description.scales, medians, rtol=1e-5)
    probes = np.concatenate([two_part_cloud(rng, 50), two_part_cloud(rng, 50, shift=1.5)])
    expected = (distances(probes, 0) / medians[0] + distances(probes, 1) / medians[1]) / 2
    np.testing.assert_allclose(description.scores(probes), expected, rtol=1e-4)
    in_torch = MahalanobisScore(description)(torch.from_numpy(probes.astype(np.float32))).numpy()
    np.testing.assert_allclose(in_torch, expected, rtol=1e-3)
    assert np.median(description.scores(validation)) == pytest.approx(1.0, abs=0.1)  # 1: like the validation images
    assert roc_auc_score([0] * 50 + [1] * 50, description.scores(probes)) > 0.95
    with pytest.raises(ProtlocError, match="do not add up"):
        describe_features(training, [12, 4])


def test_the_features_are_the_pooled_features_then_each_stage_averaged_over_space(pretrained_efficientnet):
    """Backbone.features_and_stages against the network run block by block by hand."""
    import copy

    model = copy.deepcopy(pretrained_efficientnet).eval()
    net = model.backbone.net
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, features = model.logits_and_features(images)
        x, stage_means = net.bn1(net.conv_stem(images)), []
        for block in net.blocks:
            x = block(x)
            stage_means.append(x.mean(dim=(2, 3)))
        pooled = net.global_pool(net.bn2(net.conv_head(x)))
    widths = model.backbone.feature_widths()
    assert widths == [1280, 16, 24, 40, 80, 112, 192, 320] and features.shape == (3, sum(widths))
    torch.testing.assert_close(features, torch.cat([pooled, *stage_means], dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, model(images), rtol=1e-5, atol=1e-5)
    assert not any(module.training for module in model.modules())  # the width probe left the modes alone


def test_other_timm_networks_read_the_stages_timm_lists_and_token_networks_the_pooled_features_alone():
    from protloc.models.backbones import load_backbone

    convnet = load_backbone("test_resnet", pretrained=False)
    assert convnet.stage_names == ("act1", "layer1", "layer2", "layer3")  # timm's feature_info, but the last
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = convnet.eval().features_and_stages(images)
        net = convnet.net
        stem = net.act1(net.bn1(net.conv1(images)))
        layer1 = net.layer1(net.maxpool(stem))
        layer2 = net.layer2(layer1)
        layer3 = net.layer3(layer2)
        pooled = net.global_pool(net.layer4(layer3))
    expected = torch.cat([pooled] + [x.mean(dim=(2, 3)) for x in (stem, layer1, layer2, layer3)], dim=1)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    assert convnet.feature_widths() == [part.shape[1] for part in (pooled, stem, layer1, layer2, layer3)]
    transformer = load_backbone("test_vit", pretrained=False)  # tokens, not maps: the pooled features alone
    assert transformer.stage_names == () and transformer.feature_widths() == [transformer.num_features]


def test_the_threshold_leaves_the_percentile_of_like_images_under_it():
    rng = np.random.default_rng(1)
    description = describe_features(correlated_cloud(rng, 500))
    validation_features = correlated_cloud(rng, 400)
    description.calibrate(validation_features)
    validation = description.scores(validation_features)
    threshold = outlier_threshold(validation)
    assert threshold == pytest.approx(np.percentile(validation, 99))
    assert (validation > threshold).mean() <= 0.011
    assert (description.scores(correlated_cloud(rng, 2000)) > threshold).mean() < 0.05  # new images like them
    assert (description.scores(correlated_cloud(rng, 200, shift=3.0)) > threshold).mean() > 0.9  # unlike them
    with pytest.raises(ProtlocError, match="no validation image"):
        outlier_threshold(np.array([np.nan]))


def test_the_description_is_stored_as_safetensors_and_read_back(tmp_path):
    rng = np.random.default_rng(2)
    description = describe_features(two_part_cloud(rng, 100), [12, 5])
    description.calibrate(two_part_cloud(rng, 30))
    path = tmp_path / OUTLIER_FILE
    save_description(path, description)
    assert read_weight_shapes(path) == {"mean.0": (12,), "precision.0": (12, 12), "mean.1": (5,),
                                        "precision.1": (5, 5), "scales": (2,)}  # a safetensors header, no pickle
    assert not path.read_bytes().startswith(b"\x80")  # a pickle's first byte
    loaded = load_description(path, widths=[12, 5])
    for stored, original in zip([*loaded.means, *loaded.precisions, loaded.scales],
                                [*description.means, *description.precisions, description.scales]):
        np.testing.assert_array_equal(stored, original)
    assert loaded.images == 100 and not loaded.legacy


def test_a_description_of_the_pooled_features_alone_from_before_stages_is_still_read(tmp_path):
    from safetensors.numpy import save_file
    from scipy.spatial.distance import mahalanobis

    rng = np.random.default_rng(4)
    pooled_only = describe_features(correlated_cloud(rng, 100))
    path = tmp_path / OUTLIER_FILE
    save_file({"mean": pooled_only.means[0], "precision": pooled_only.precisions[0]}, str(path))
    loaded = load_description(path, widths=[12, 5])  # the backbone gives more parts than the file describes
    assert loaded.legacy and loaded.widths == [12]
    probes = two_part_cloud(rng, 20, shift=1.0)
    expected = [mahalanobis(row[:12], pooled_only.means[0], pooled_only.precisions[0]) for row in probes]
    np.testing.assert_allclose(loaded.scores(probes), expected, rtol=1e-4)
    in_torch = MahalanobisScore(loaded, [12, 5])(torch.from_numpy(probes.astype(np.float32))).numpy()
    np.testing.assert_allclose(in_torch, expected, rtol=1e-3)


def test_a_damaged_or_foreign_description_is_a_clear_error(tmp_path):
    description = describe_features(two_part_cloud(np.random.default_rng(3), 100), [12, 5])
    path = tmp_path / OUTLIER_FILE
    save_description(path, description)
    with pytest.raises(ProtlocError, match=r"describes feature parts of widths \[12, 5\], but the backbone gives \[64, 5\]"):
        load_description(path, widths=[64, 5])
    path.write_bytes(path.read_bytes()[:200])  # cut short
    with pytest.raises(ProtlocError, match=f"{OUTLIER_FILE}: not a readable safetensors file"):
        load_description(path)
    from safetensors.numpy import save_file

    save_file({"mean.0": np.zeros(4, np.float32)}, str(path), metadata={"parts": "1"})
    with pytest.raises(ProtlocError, match="expected tensors mean.K"):
        load_description(path)
    save_file({"mean.0": np.zeros(2, np.float32), "precision.0": np.eye(2, dtype=np.float32),
               "scales": np.zeros(1, np.float32)}, str(path), metadata={"parts": "1"})
    with pytest.raises(ProtlocError, match="scales that are not positive"):
        load_description(path)
    path.unlink()
    with pytest.raises(ProtlocError, match="not found"):
        load_description(path)


@pytest.fixture(scope="module")
def described_run(untrained_run, demo_data):
    """An untrained run whose outlier description is that of the demo training images' features."""
    return untrained_run(outliers_of=sorted((demo_data / "train").glob("*.png"))[:60])


def test_predictions_carry_the_outlier_score_of_the_same_forward_pass(described_run, demo_data, real_data):
    images = sorted((demo_data / "test").glob("*.png"))[:6] + [Path(real_data) / "z2g-sample" / "10034.png"]
    predictor = protloc.load(described_run, engine="torch", precision="fp32")
    prediction = predictor.predict(images)
    description = load_description(described_run / OUTLIER_FILE)
    expected = description.scores(outlier_features(predictor, images))
    np.testing.assert_allclose(prediction.outlier_scores, expected, rtol=1e-4)
    threshold = load_config(described_run).outlier_threshold
    np.testing.assert_array_equal(prediction.outliers, expected > threshold)
    frame = prediction.to_frame()
    assert list(frame.columns[-2:]) == ["outlier_score", "outlier"]
    onnx = protloc.load(described_run, engine="onnx").predict(images)  # the score is the ONNX graph's second output
    np.testing.assert_allclose(onnx.outlier_scores, prediction.outlier_scores, rtol=1e-3)


def test_predict_writes_scores_with_probabilities_and_keeps_the_kaggle_format_exact(described_run, demo_data, tmp_path, capsys):
    probabilities, submission = tmp_path / "p.csv", tmp_path / "s.csv"
    assert main(["predict", str(described_run), str(demo_data), "--out", str(probabilities), "--probabilities"]) == 0
    out = capsys.readouterr().out
    assert "model trained on data this config does not record" in out  # an untrained run has no record
    written = pd.read_csv(probabilities)
    assert list(written.columns[-2:]) == ["outlier_score", "outlier"]
    assert (written["outlier"] == (written["outlier_score"] > load_config(described_run).outlier_threshold)).all()
    assert main(["predict", str(described_run), str(demo_data), "--out", str(submission)]) == 0
    assert list(pd.read_csv(submission).columns) == ["Image", "Label"]


def test_a_damaged_description_stops_predict_with_one_line(described_run, demo_data, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(described_run, run)
    (run / OUTLIER_FILE).write_bytes(b"\x80\x04not safetensors at all")
    for engine in ("torch", "onnx"):
        code = main(["predict", str(run), str(demo_data), "--out", str(tmp_path / "p.csv"), "--engine", engine])
        error = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(error) == 1 and f"{OUTLIER_FILE}: not a readable safetensors file" in error[0]
        assert "Traceback" not in error[0]


def test_a_kfold_folder_scores_with_the_mean_of_its_folds(untrained_run, demo_data, tmp_path):
    training_images = sorted((demo_data / "train").glob("*.png"))
    out = tmp_path / "cv"
    for fold in range(2):
        untrained_run(fold_dir(out, fold), spread=5.0 * (fold + 1), outliers_of=training_images[fold::2][:40])
    thresholds = [load_config(fold_dir(out, fold)).outlier_threshold for fold in range(2)]
    config = load_config(fold_dir(out, 0))
    write_ensemble(out, ["fold-0", "fold-1"], config.label_set, config.label_names, [0.5] * 10,
                   TrainingOutcome(), float(np.mean(thresholds)))
    images = sorted((demo_data / "test").glob("*.png"))[:5]
    per_fold = [protloc.load(fold_dir(out, fold), engine="torch", precision="fp32").predict(images).outlier_scores
                for fold in range(2)]
    ensemble = protloc.load(out, engine="torch", precision="fp32")
    assert isinstance(ensemble.engine.scored_model.scorer, EnsembleScore)
    result = ensemble.predict(images)
    np.testing.assert_allclose(result.outlier_scores, np.mean(per_fold, axis=0), rtol=1e-4)
    assert result.outlier_threshold == pytest.approx(np.mean(thresholds))
    assert json.loads((out / "ensemble.json").read_text())["outlier_threshold"] == pytest.approx(np.mean(thresholds))


def test_evaluate_and_the_report_show_the_outliers_and_what_the_model_learned_from(described_run, demo_data, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(described_run, run)
    assert main(["evaluate", str(run), str(demo_data), "--out", str(tmp_path / "evaluation")]) == 0
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    predictions = pd.read_csv(tmp_path / "evaluation" / "predictions.csv")
    threshold = load_config(run).outlier_threshold
    assert metrics["outliers"]["threshold"] == pytest.approx(threshold)
    assert metrics["outliers"]["images_flagged"] == int((predictions["outlier_score"] > threshold).sum())
    assert (predictions["outlier"] == (predictions["outlier_score"] > threshold)).all()
    assert main(["report", str(run), "--data", str(demo_data), "--samples", "1"]) == 0
    page = (run / "report.html").read_text()
    body = page[page.index("<body"):]
    assert body.index("The model was trained on") < body.index("Evaluation on")  # the report opens with it
    assert "unlike the images the model was trained on" in page
