"""The HTTP API in-process (FastAPI's TestClient): every route and option, every error status, and
probabilities equal to `protloc predict`'s on the same images."""
from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from protloc.cli import main
from protloc.labels import HPA10
from protloc.runs import load_config
from protloc.service.app import create_app
from protloc.service.limits import ServiceLimits
from tests.service.conftest import THRESHOLD, png_bytes

NAMES = list(HPA10.names)


def files_of(paths):
    return [("files", (path.name, path.read_bytes(), "image/png")) for path in paths]


def probabilities_of(result) -> list[float]:
    return [result["probabilities"][name] for name in NAMES]


def protloc_predict(run_dir, paths, out, *flags) -> pd.DataFrame:
    code = main(["predict", str(run_dir), *map(str, paths), "--out", str(out), "--device", "cpu",
                 "--precision", "fp32", "--workers", "0", *flags])
    assert code == 0
    return pd.read_csv(out, dtype=str, keep_default_na=False)


# ---------------------------------------------------------------- GET /health, the page, the docs


def test_health_describes_the_run_from_its_config(client, run_dir):
    response = client.get("/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok" and health["run"] == "run" and health["engine"] == "onnx"  # the CPU default
    assert health["backbone"] == "test_resnet" and health["image_size"] == 32
    assert health["labels"] == NAMES
    assert health["thresholds"] == {name: THRESHOLD for name in NAMES}
    assert health["stains"] == ["red", "green", "blue"]
    assert health["csv_columns"] == ["Image", "Label"]  # a Zero-to-GANs run's Kaggle format
    assert health["max_files"] == 8 and health["max_pixels"] == 1_000_000
    assert health["outlier_threshold"] == pytest.approx(load_config(run_dir).outlier_threshold)
    assert health["trained_on"] == load_config(run_dir).trained_on and health["training_data"] is None


def test_every_image_gets_its_outlier_score_and_flag(client, predictor, image_paths, real_data):
    from pathlib import Path

    paths = [*image_paths[:3], Path(real_data) / "z2g-sample" / "10034.png"]
    response = client.post("/predict", files=[("files", (path.name, path.read_bytes(), "image/png")) for path in paths])
    assert response.status_code == 200
    answers = response.json()["images"]
    expected = predictor.predict(paths)
    np.testing.assert_allclose([answer["outlier_score"] for answer in answers], expected.outlier_scores, rtol=1e-4)
    assert [answer["outlier"] for answer in answers] == expected.outliers.tolist()


def test_the_page_and_its_files_are_served_from_the_package_with_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in (("static/page.js", "javascript"), ("static/page.css", "text/css")):
        assert asset in page.text
        response = client.get("/" + asset)
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text
    assert "https://" not in page.text and "http://" not in page.text


def test_docs_work_offline_with_assets_served_locally(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text and "https://" not in docs.text.replace("https://fastapi", "")
    for asset in ("/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"):
        assert asset in docs.text
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 10_000
    schema = client.get("/openapi.json").json()
    assert {"/health", "/predict", "/explain"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/png", "image/tiff"} <= set(body)


# ---------------------------------------------------------------- POST /predict


def test_predict_equals_protloc_predict_on_the_same_images(client, run_dir, image_paths, tmp_path):
    paths = image_paths[:5]
    response = client.post("/predict", files=files_of(paths))
    assert response.status_code == 200
    results = response.json()["images"]
    assert [result["name"] for result in results] == [path.name for path in paths]

    expected = protloc_predict(run_dir, paths, tmp_path / "p.csv", "--probabilities")
    np.testing.assert_allclose([probabilities_of(r) for r in results], expected[NAMES].astype(float).to_numpy(), atol=1e-5)
    submission = protloc_predict(run_dir, paths, tmp_path / "s.csv")
    assert [" ".join(map(str, r["classes"])) for r in results] == submission["Label"].tolist()
    assert all(r["labels"] == [NAMES[i] for i in r["classes"]] for r in results)
    assert len({tuple(r["classes"]) for r in results}) > 1, "the untrained run should label images differently"


def test_a_raw_image_body_predicts_one_image(client, image_paths):
    data = image_paths[0].read_bytes()
    form = client.post("/predict", files=[("files", ("a.png", data))]).json()["images"][0]
    for kind in ("image/png", "application/octet-stream"):
        response = client.post("/predict", content=data, headers={"Content-Type": kind})
        assert response.status_code == 200
        (result,) = response.json()["images"]
        assert result["name"] == "image"
        np.testing.assert_allclose(probabilities_of(result), probabilities_of(form), atol=1e-6)


@pytest.mark.parametrize("where", ["query", "form"])
def test_tta_averages_the_flips_and_turns(client, predictor, image_paths, where):
    expected = predictor.predict_proba([image_paths[0]], tta=True)[0]
    assert np.abs(expected - predictor.predict_proba([image_paths[0]])[0]).max() > 1e-4  # TTA changes the answer
    response = client.post("/predict" + ("?tta=true" if where == "query" else ""), files=files_of(image_paths[:1]),
                           data={"tta": "true"} if where == "form" else {})
    assert response.status_code == 200
    np.testing.assert_allclose(probabilities_of(response.json()["images"][0]), expected, atol=1e-5)


@pytest.mark.parametrize("where", ["query", "form"])
def test_threshold_and_allow_empty_decide_the_labels(client, predictor, image_paths, where):
    probabilities = predictor.predict_proba([image_paths[0]])[0]
    ranked = np.sort(probabilities)[::-1]
    between = float((ranked[2] + ranked[3]) / 2)  # between the third and fourth most likely classes

    def labels(**options):
        query = "?" + "&".join(f"{k}={v}" for k, v in options.items()) if where == "query" else ""
        response = client.post("/predict" + query, files=files_of(image_paths[:1]),
                               data={k: str(v) for k, v in options.items()} if where == "form" else {})
        assert response.status_code == 200
        return response.json()

    result = labels(threshold=between)
    assert result["images"][0]["labels"] == [n for n, p in zip(NAMES, probabilities) if p >= between]
    assert len(result["images"][0]["labels"]) == 3 and set(result["thresholds"].values()) == {between}
    above_all = float((ranked[0] + 1) / 2)
    assert labels(threshold=above_all, allow_empty="true")["images"][0]["labels"] == []
    assert labels(threshold=above_all, allow_empty="false")["images"][0]["labels"] == [NAMES[int(np.argmax(probabilities))]]


def stain_files(array: np.ndarray, stains=("red", "green", "blue")):
    return [(stain, (f"cell-7_{stain}.png", png_bytes(array[:, :, i]), "image/png")) for i, stain in enumerate(stains)]


def test_a_stain_set_is_stacked_in_the_runs_channel_order(client, image_paths):
    array = np.asarray(Image.open(image_paths[1]).convert("RGB"))
    composite = client.post("/predict", files=files_of(image_paths[1:2])).json()["images"][0]
    response = client.post("/predict", files=stain_files(array) + files_of(image_paths[:1]))
    assert response.status_code == 200
    single, stained = response.json()["images"]  # files first, then the stain set
    assert stained["name"] == "cell-7" and single["name"] == image_paths[0].name
    # Equal up to float rounding: a batch of two runs other kernels than a batch of one.
    np.testing.assert_allclose(probabilities_of(stained), probabilities_of(composite), atol=1e-6)
    swapped = client.post("/predict", files=stain_files(array[:, :, ::-1])).json()["images"][0]
    # The order matters, so it was followed.
    assert np.abs(np.subtract(probabilities_of(swapped), probabilities_of(composite))).max() > 1e-3


def test_a_stain_set_missing_a_stain_the_run_needs_is_422_naming_it(client, image_paths):
    array = np.asarray(Image.open(image_paths[0]).convert("RGB"))
    response = client.post("/predict", files=stain_files(array)[:2])
    assert response.status_code == 422
    assert "no blue image" in response.json()["detail"]


def test_a_stain_field_given_twice_is_422_naming_it(client, image_paths):
    """Issue 31, finding 12: which of two red images would be used is not the client's to guess."""
    array = np.asarray(Image.open(image_paths[0]).convert("RGB"))
    files = stain_files(array)
    response = client.post("/predict", files=[*files, ("red", ("other_red.png", png_bytes(array[:, :, 2]), "image/png"))])
    assert response.status_code == 422
    assert "red (2 times) given more than once" in response.json()["detail"]


# ---------------------------------------------------------------- POST /explain


def decode_data_url(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_explain_gives_an_overlay_per_predicted_class_and_the_channels(client, image_paths):
    predicted = client.post("/predict", files=files_of(image_paths[:1])).json()["images"][0]
    response = client.post("/explain", files=files_of(image_paths[:1]))
    assert response.status_code == 200
    data = response.json()
    assert data["image"]["labels"] == predicted["labels"]
    np.testing.assert_allclose(probabilities_of(data["image"]), probabilities_of(predicted), atol=1e-6)
    assert [part["label"] for part in data["explanations"]] == predicted["labels"]
    for part in data["explanations"]:
        assert part["predicted"] and part["probability"] == data["image"]["probabilities"][part["label"]]
        assert decode_data_url(part["overlay"]).shape == (32, 32, 3)  # the model's view, as `protloc explain`
    original = np.asarray(Image.open(image_paths[0]).convert("RGB"))
    np.testing.assert_array_equal(decode_data_url(data["composite"]), original)
    np.testing.assert_array_equal(decode_data_url(data["green"]), original[:, :, 1])


@pytest.mark.parametrize("classes, expected", [(["all"], NAMES), (["3", "nucleoplasm"], NAMES[3:5]),
                                               (["Cytosol"], ["Cytosol"])])
def test_explain_takes_the_classes_to_explain(client, image_paths, classes, expected):
    for request in ({"params": {"classes": classes}}, {"data": {"classes": classes}}):
        response = client.post("/explain", files=files_of(image_paths[:1]), **request)
        assert response.status_code == 200
        assert [part["label"] for part in response.json()["explanations"]] == expected


def test_explain_refuses_unknown_classes_and_more_than_one_image(client, image_paths):
    response = client.post("/explain", files=files_of(image_paths[:1]), data={"classes": ["Cytoplasm"]})
    assert response.status_code == 422 and "'Cytoplasm' is not a class of this run" in response.json()["detail"]
    response = client.post("/explain", files=files_of(image_paths[:2]))
    assert response.status_code == 422 and "one image" in response.json()["detail"]


# ---------------------------------------------------------------- errors


def big_png(width: int, height: int) -> bytes:
    return png_bytes(np.zeros((height, width), dtype=np.uint8))


@pytest.mark.parametrize("send, status, says", [
    (dict(data={"tta": "true"}), 400, "no image"),
    (dict(content=b"--x\r\nbroken", headers={"Content-Type": "multipart/form-data"}), 400, ""),
    (dict(files=[("files", (f"{i}.png", b"x")) for i in range(9)]), 413, "limit is 8"),
    (dict(content=b"\0" * 1_100_000, headers={"Content-Type": "image/png"}), 413, ""),
    (dict(files=[("files", ("wide.png", big_png(1001, 1000)))]), 413, "wide.png: 1000 x 1001 x 1 image: 1,001,000 pixels, more than the limit of 1,000,000"),
    (dict(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "Content-Type text/plain"),
    (dict(files=[("files", ("notes.png", b"these are not pixels"))]), 415, "notes.png: not a readable image (not PNG, JPEG or TIFF)"),
    (dict(files=[("files", ("cut.png", big_png(64, 64)[:60]))]), 422, "cut.png: not a readable image"),
    (dict(files=[("files", ("empty.png", b""))]), 422, "empty.png: empty file"),
    (dict(params={"threshold": "1.5"}, content=b"x", headers={"Content-Type": "image/png"}), 422, ""),
    (dict(params={"tta": "maybe"}, content=b"x", headers={"Content-Type": "image/png"}), 422, ""),
    (dict(params={"tta": "true"}, data={"tta": "false"}), 422, "tta given twice"),
])
def test_bad_requests_get_a_4xx_that_says_why(client, send, status, says):
    response = client.post("/predict", **send)
    assert response.status_code == status, response.text
    assert says in response.text


def test_unknown_paths_and_methods_are_404_and_405(client):
    assert client.get("/nowhere").status_code == 404
    assert client.get("/predict").status_code == 405
    assert client.delete("/health").status_code == 405


def test_a_host_header_not_of_this_server_is_refused_and_cors_is_off_unless_asked(client, predictor):
    assert client.get("/health", headers={"Host": "attacker.example"}).status_code == 400
    origin = {"Origin": "https://lab.example.org"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    app = create_app(predictor, run_name="run", allowed_hosts=["testserver"], cors_origins=["https://lab.example.org"])
    with TestClient(app) as cors_client:
        allowed = cors_client.get("/health", headers=origin).headers
        assert allowed["access-control-allow-origin"] == "https://lab.example.org"
        assert "access-control-allow-origin" not in cors_client.get("/health", headers={"Origin": "https://x.org"}).headers


def test_the_onnx_engine_serves_the_same_probabilities_and_explains_with_the_torch_weights(predictor, image_paths,
                                                                                           run_dir, tmp_path):
    import protloc
    from protloc.inference.onnx_export import export_onnx

    export_onnx(predictor.model, predictor.config, tmp_path / "model.onnx")
    onnx = protloc.load(run_dir, engine="onnx", onnx=tmp_path / "model.onnx")
    app = create_app(onnx, run_name="run", engine="onnx", explainer=predictor, allowed_hosts=["testserver"])
    with TestClient(app) as onnx_client:
        assert onnx_client.get("/health").json()["engine"] == "onnx"
        result = onnx_client.post("/predict", files=files_of(image_paths[:2])).json()["images"]
        np.testing.assert_allclose([probabilities_of(r) for r in result], predictor.predict_proba(image_paths[:2]),
                                   atol=1e-5)
        response = onnx_client.post("/explain", files=files_of(image_paths[:1]), params={"classes": "all"})
        assert response.status_code == 200 and len(response.json()["explanations"]) == len(NAMES)


# ---------------------------------------------------------------- load: 503, deadlines, batching


def test_busy_decoders_make_excess_requests_wait_then_503(predictor, image_paths):
    limits = ServiceLimits(decode_slots=1, admission_wait_s=0.2)
    app = create_app(predictor, run_name="run", limits=limits, allowed_hosts=["testserver"])
    with TestClient(app) as busy:
        service = app.state.runtime
        busy.portal.call(service.decode_slots.acquire)  # the only decoder is taken
        response = busy.post("/predict", files=files_of(image_paths[:1]))
        assert response.status_code == 503 and response.headers["retry-after"]
        assert "busy" in response.json()["detail"]
        service.decode_slots.release()
        assert busy.post("/predict", files=files_of(image_paths[:1])).status_code == 200


def test_a_request_not_answered_within_the_deadline_is_503(predictor, image_paths):
    limits = ServiceLimits(decode_slots=1, admission_wait_s=5, request_timeout_s=0.3)
    app = create_app(predictor, run_name="run", limits=limits, allowed_hosts=["testserver"])
    with TestClient(app) as slow:
        slow.portal.call(app.state.runtime.decode_slots.acquire)
        response = slow.post("/predict", files=files_of(image_paths[:1]))
        assert response.status_code == 503 and "not answered within 0.3 s" in response.json()["detail"]


def test_concurrent_requests_share_forward_passes(predictor, image_paths):
    limits = ServiceLimits(batch_wait_ms=50, batch_size=16)
    app = create_app(predictor, run_name="run", limits=limits, allowed_hosts=["testserver"])
    with TestClient(app) as shared:
        service = app.state.runtime
        before = service.batching.forward_passes
        answers = [None] * 8

        def ask(index):
            answers[index] = shared.post("/predict", files=files_of(image_paths[index:index + 1]))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(answer.status_code == 200 for answer in answers)
        assert service.batching.forward_passes - before < 8  # fewer passes than requests: they were batched
        alone = predictor.predict_proba(image_paths[:8])
        np.testing.assert_allclose([probabilities_of(a.json()["images"][0]) for a in answers], alone, atol=1e-5)


# ---------------------------------------------------------------- the input's bit depth; K-fold folders


@pytest.mark.parametrize("where", ["params", "data"])
def test_bit_depth_states_the_depth_of_uploaded_pixels(client, run_dir, image_paths, where):
    import imagecodecs

    import protloc

    twelve_bit = np.asarray(Image.open(image_paths[0]).convert("RGB")).astype(np.uint16) * 16
    upload = [("files", ("deep.png", imagecodecs.png_encode(twelve_bit), "image/png"))]
    response = client.post("/predict", files=upload, **{where: {"bit_depth": "12"}})
    assert response.status_code == 200, response.text
    expected = protloc.load(run_dir, precision="fp32", bit_depth=12).predict_proba(twelve_bit)[0]
    np.testing.assert_allclose(probabilities_of(response.json()["images"][0]), expected, atol=1e-5)
    as_sixteen = client.post("/predict", files=upload, **{where: {"bit_depth": "16"}}).json()["images"][0]
    assert np.abs(np.array(probabilities_of(as_sixteen)) - expected).max() > 1e-3
    response = client.post("/predict", files=upload, **{where: {"bit_depth": "11"}})
    assert response.status_code == 422 and "bit_depth 11: expected one of 8, 10, 12, 14, 16" in response.text


def test_explain_on_a_kfold_folder_answers_as_protloc_explain_does(untrained_run, image_paths, tmp_path):
    import protloc
    from protloc.reports.explain import explain_image as explain_file
    from protloc.inference.explanations import model_view
    from protloc.map_figures import overlay_map
    from protloc.runs import fold_dir, write_ensemble
    from protloc.runs import TrainingOutcome

    out = tmp_path / "cv"
    for fold in range(2):
        untrained_run(fold_dir(out, fold), image_size=64, spread=10.0 * (fold + 1))
    write_ensemble(out, ["fold-0", "fold-1"], HPA10.name, NAMES, [0.5] * len(NAMES), TrainingOutcome())
    predictor = protloc.load(out, engine="torch", precision="fp32")
    limits = ServiceLimits(max_upload_bytes=1_000_000, max_pixels=1_000_000, max_files=8, batch_size=8)
    with TestClient(create_app(predictor, run_name="cv", limits=limits, allowed_hosts=["testserver"])) as kfold:
        response = kfold.post("/explain", files=files_of(image_paths[:1]), data={"classes": ["Cytosol"]})
    assert response.status_code == 200, response.text
    explanation, figure = explain_file(predictor, "x", str(image_paths[0]), [NAMES.index("Cytosol")])
    import matplotlib.pyplot as plt

    plt.close(figure)
    seen = model_view(predictor.prepare(str(image_paths[0]))[None], predictor.config)
    expected = (overlay_map(seen, explanation.cams[0]) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(decode_data_url(response.json()["explanations"][0]["overlay"]), expected)


def test_an_ome_tiff_upload_is_read_by_its_channel_names(client, run_dir, image_paths, tmp_path):
    import tifffile

    import protloc

    rgb = np.asarray(Image.open(image_paths[0]).convert("RGB"))
    tifffile.imwrite(tmp_path / "cell.ome.tif", np.stack([rgb[:, :, 2], rgb[:, :, 0], rgb[:, :, 1]]), ome=True,
                     photometric="minisblack", metadata={"axes": "CYX", "Channel": {"Name": ["Nuc", "MT", "Protein"]}})
    upload = [("files", ("cell.ome.tif", (tmp_path / "cell.ome.tif").read_bytes(), "image/tiff"))]
    response = client.post("/predict", files=upload, data={"stain_map": "Nuc=blue,MT=red,Protein=green"})
    assert response.status_code == 200, response.text
    expected = protloc.load(run_dir, precision="fp32").predict_proba(rgb)[0]
    np.testing.assert_allclose(probabilities_of(response.json()["images"][0]), expected, atol=1e-5)
    response = client.post("/predict", files=upload)
    assert response.status_code == 422 and "channel 'Nuc' is not a stain protloc knows by name" in response.text
    response = client.post("/predict", files=upload, data={"stain_map": "Nuc=blue,MT=blue"})
    assert response.status_code == 422 and "the blue stain given to two channels, Nuc and MT" in response.text
