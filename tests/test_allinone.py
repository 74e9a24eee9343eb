"""All-in-one (ADMS): folded branches, FAIG masks, training CLI, the shipped checkpoint through
the runtime (hard and soft routing), INT8 on its bundle, the rain synthesizer, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.func import functional_call

from conftest import SHARED, Cli, need_shared
from edgerestore.models import AllInOne, DnCNN, create_model, save_checkpoint
from edgerestore.models.allinone import DEGRADATIONS, KINDS, PlainNet
from edgerestore.models.train.allinone import TrainConfig, faig, from_finetuned, per_filter, top_filters, train
from edgerestore.runtime import degrade, imageio
from edgerestore.runtime.bundle import Bundle
from edgerestore.runtime.errors import EdgeRestoreError
from edgerestore.runtime.executor import RoutePolicy, softmax
from edgerestore.runtime.session import Session
from edgerestore.runtime.tilelib import extract, merge


def perturbed(net: PlainNet, seed: int, scale: float = 0.05) -> PlainNet:
    out = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return out


def tiny(q: float = 5.0, features: int = 16, depth: int = 6) -> tuple[AllInOne, PlainNet, dict]:
    """A random UM, random 'fine-tuned' copies and random FAIG scores."""
    torch.manual_seed(0)
    um = PlainNet(3, features, depth)
    finetuned = {d: perturbed(um, i + 1) for i, d in enumerate(DEGRADATIONS)}
    n = len(um.filters())
    scores = {d: torch.rand(n, generator=torch.Generator().manual_seed(10 + i)).tolist()
              for i, d in enumerate(DEGRADATIONS)}
    model = from_finetuned(um, finetuned, scores, [1.0, 3.0, 5.0], q, classifier_features=8)
    with torch.no_grad():  # spread the random classifier's logits so the top-2 ranking is clear-cut
        model.classifier.fc.weight.mul_(20.0)
    return model.eval(), um, finetuned


def structured(seed: int, h: int = 150, w: int = 170) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / w
    img = np.stack([x, y, x * y], axis=2) * 0.6 + 0.2
    patch = img[h // 4:h * 3 // 4, w // 2:w * 15 // 16]
    patch += rng.normal(0, 0.15, patch.shape)
    return np.clip(img, 0, 1)


# ---------------------------------------------------------------------------- the model
def test_folded_branch_equals_the_masked_delta_formulation():
    """theta_UM + (theta_ft - theta_UM) * M_d, with M_d built here from the ranking, against the
    plain network the export writes."""
    for q in (1.0, 3.0, 5.0):
        model, um, finetuned = tiny(q=q)
        x = torch.rand(2, 3, 40, 48)
        for d in DEGRADATIONS:
            theta_ft = dict(finetuned[d].named_parameters())
            params = {}
            for name, p in um.named_parameters():
                mask = torch.zeros_like(p)
                layer = int(name.split(".")[1])
                for filter_layer, o in model.selected(d):
                    if filter_layer == layer:
                        mask[o] = 1.0
                params[name] = p.detach() + (theta_ft[name].detach() - p.detach()) * mask
            with torch.no_grad():
                expected = functional_call(um, params, (x,))
                folded = model.fold(d)(x)
                mixed = functional_call(model.um, model.mixed_parameters({e: float(e == d) for e in DEGRADATIONS}),
                                        (x,))
            assert (folded - expected).abs().max() <= 1e-5
            assert (mixed - expected).abs().max() <= 1e-5
            assert (folded - um(x)).abs().max() > 1e-3, "the filter deltas must change the output"


@pytest.mark.parametrize("q", [1.0, 3.0, 5.0])
def test_masks_select_exactly_q_percent_of_the_filters(q):
    model = AllInOne()  # the shipped architecture: 9 x 40 + 3 = 363 filters
    n = model.filter_count()
    assert n == 363
    scores = np.random.default_rng(0).random(n).tolist()
    chosen = top_filters(scores, q)
    assert len(chosen) == round(q / 100 * n) and len(set(chosen)) == len(chosen)
    assert min(scores[i] for i in chosen) > max(s for i, s in enumerate(scores) if i not in chosen)
    assert top_filters(scores, 5.0)[:len(chosen)] == chosen  # smaller q: a prefix of the same ranking
    small, _, _ = tiny(q=q)
    masked = sum(int((delta.flatten(1).abs().sum(1) > 0).sum()) for name, delta in
                 small.masked_deltas("rain").items() if name.endswith("weight"))
    assert masked == small.selected_count() == max(1, round(q / 100 * small.filter_count()))


def test_faig_scores_only_the_filters_fine_tuning_moved():
    torch.manual_seed(0)
    um = PlainNet(3, 8, 4)
    finetuned = copy.deepcopy(um)
    moved = [(1, 3), (2, 5)]
    with torch.no_grad():
        for layer, o in moved:
            finetuned.convs[layer].weight[o] += 0.1
    batches = [(torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24))]
    scores = faig(um, finetuned, batches, steps=4)
    filters = um.filters()
    assert sorted(filters[i] for i in top_filters(scores, 100 * 2 / len(filters))) == moved
    assert all(s == 0 for f, s in zip(filters, scores) if f not in moved)
    # the definition: mean over path points of |grad * delta|, summed per filter
    delta = {n: finetuned.state_dict()[n] - p.detach() for n, p in um.named_parameters()}
    params = {n: (p.detach() + 0.5 * delta[n]).requires_grad_(True) for n, p in um.named_parameters()}
    loss = torch.nn.functional.mse_loss(functional_call(um, params, (batches[0][0],)), batches[0][1])
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    one_point = per_filter({n: (grads[n] * delta[n]).abs() for n in params}, um)
    assert np.allclose(faig(um, finetuned, batches, steps=1), one_point, rtol=1e-6, atol=0)


def test_plan_is_a_classifier_and_one_blendable_switch():
    model, _, _ = tiny()
    split = model.stage_plan()
    assert [s.name for s in split.stages] == ["classifier", *DEGRADATIONS]
    run, switch = split.plan
    assert run["stage"] == "classifier" and switch["op"] == "switch" and switch["blend"] == ["image"]
    assert [b["name"] for b in switch["branches"]] == list(DEGRADATIONS)
    um_macs = split.stages[1].macs_per_pixel
    assert um_macs == sum(p.numel() for n, p in model.um.named_parameters() if n.endswith("weight"))
    assert split.stages[0].macs_per_pixel < 0.1 * um_macs
    counts = model.parameter_counts()
    assert counts["filters"] == sum(model.adf_parameter_count(d) for d in DEGRADATIONS) > 0


# ---------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("train") / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), (structured(i, 160, 176)[..., ::-1] * 255).round().astype(np.uint8))
    return folder


TINY = ["--features", "6", "--depth", "3", "--classifier-features", "4", "--unified-steps", "3",
        "--finetune-steps", "2", "--faig-steps", "2", "--faig-batches", "1", "--filter-steps", "1",
        "--classifier-steps", "2", "--batch", "3", "--patch", "24"]


def test_train_command_runs_every_stage_and_exports(train_data, tmp_path, run_cli):
    out = tmp_path / "aio.pth"
    result = run_cli("train", "allinone", "--data", train_data, "-o", out, *TINY)
    assert result.exit_code == 0, result.output
    total = 3 + 3 * 2 + 3 * 2 + 3 * 3 + 2
    assert f"step {total}/{total}" in result.stderr and "classifier" in result.stderr
    model = create_model("allinone", weights=out)
    assert model.provenance["checkpoint_kind"] == "edgerestore" and model.q == 3.0
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["command"].startswith("edgerestore train allinone --data ")
    stages = {"unified", "classifier", *(f"{s}:{d}" for s in ("finetune", "faig") for d in DEGRADATIONS),
              *(f"filters:{d}:{q}%" for d in DEGRADATIONS for q in (1, 3, 5))}
    assert set(meta["stage_seconds"]) == stages
    assert set(meta["validation"]["rain"]) == {"input", "unified", "finetuned", "q1", "q3", "q5", "q1_cut",
                                               "q3_cut", "q5_cut"}
    bundle = tmp_path / "b"
    result = run_cli("export", "allinone", "--weights", out, "-o", bundle, "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["parity"]) == 4


def test_training_resumes_where_it_stopped(train_data, tmp_path):
    out = tmp_path / "aio.pth"
    config = TrainConfig(data=str(train_data), output=str(out), features=6, depth=3, classifier_features=4,
                         unified_steps=3, finetune_steps=2, faig_steps=2, faig_batches=1, filter_steps=1,
                         classifier_steps=2, batch=3, patch=24, save_every=1)

    class Stop(Exception):
        pass

    def stop_at_8(s):
        if s["step"] == 8:  # in finetune:noise, after the step is saved
            raise Stop

    with pytest.raises(Stop):
        train(config, progress=stop_at_8)
    assert not out.exists() and out.with_name("aio.pth.state").exists()
    steps = []
    train(config, progress=lambda s: steps.append((s["step"], s["stage"])))
    assert steps[0] == (9, "finetune:noise") and steps[-1] == (26, "classifier")
    assert out.exists()
    # the masked filters' training moved nothing but the masked filters
    state = torch.load(out.with_name("aio.pth.state"), weights_only=True)
    um, net = state["unified"], state["filters"]["blur"][3.0]
    chosen = [PlainNet(3, 6, 3).filters()[i] for i in top_filters(state["faig"]["blur"], 3.0)]
    for name, value in um.items():
        layer = int(name.split(".")[1])
        moved = (net[name] != value).flatten(1).any(1) if value.ndim > 1 else net[name] != value
        assert {(layer, int(o)) for o in moved.nonzero().flatten()} <= set(chosen)
    other = TrainConfig(**{**config.__dict__, "features": 7})
    with pytest.raises(EdgeRestoreError, match="--features 6, not 7"):
        train(other)


# ---------------------------------------------------------------------------- the shipped checkpoint
@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("bundles") / "allinone"
    result = Cli()("export", "allinone", "-o", bundle, "--json")
    assert result.exit_code == 0, result.output
    return bundle, create_model("allinone")


def half_and_half(clean: np.ndarray, left: str, right: str) -> np.ndarray:
    w = clean.shape[1] // 2
    return np.concatenate([degrade.parse(left).apply(clean[:, :w]), degrade.parse(right).apply(clean[:, w:])], 1)


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()[100:356, 60:356].astype(np.float64) / 255.0


def test_export_without_weights_uses_the_shipped_checkpoint(shipped):
    bundle, model = shipped
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["provenance"]["weights"].endswith("allinone.pth")
    assert set(manifest["stages"]) == {"classifier", *DEGRADATIONS}
    assert not manifest["tiling"]["fixed"] and manifest["model"]["config"]["q"] == 3.0
    assert 100_000 <= model.parameter_counts()["unified"] <= 300_000


def test_bundle_routes_and_restores_like_pytorch(shipped):
    bundle, model = shipped
    image = half_and_half(astronaut(), "gaussian:25", "rain:0.002").astype(np.float32)
    route = Session(bundle, backend="onnxruntime").run(image, clip=False)
    restored = route.image
    tiles = extract(image, route.grid)
    with torch.no_grad():
        expected, choice = model.route(torch.from_numpy(tiles))
    decisions = route.decisions["degradation"]
    assert len(set(decisions.tolist())) > 1, "the test image should route its halves differently"
    assert (decisions == choice.numpy()).all()
    np.testing.assert_allclose(restored, merge(expected.numpy(), route.grid), atol=1e-4)
    # one plain network per tile: executed MACs are the full path's (every branch costs the same)
    assert np.isclose(route.mac_ratio, 1.0)


def test_classifier_routes_each_degradation_to_its_branch(shipped):
    """The bundle's classifier stage on the runtime's tiles of held-out images, decided by the
    executor's policies: every image by its tiles' vote, and nearly every tile by itself."""
    from edgerestore.runtime.backends import load_stage
    from edgerestore.runtime.tiling import TileGrid

    bundle, _ = shipped
    classifier = load_stage("onnxruntime", Bundle(bundle).stage_path("classifier", "fp32"))
    switch = Bundle(bundle).plan[1]
    t = Bundle(bundle).tiling
    files = imageio.list_images(need_shared(SHARED / "data" / "McMaster"))[:6]
    for index, d in enumerate(DEGRADATIONS):
        tile_hits = []
        for path in files:
            clean = imageio.to_float(imageio.read_image(path)).astype(np.float64)
            degraded = degrade.parse(KINDS[d].evaluation).apply(clean).astype(np.float32)
            tiles = extract(degraded, TileGrid(*degraded.shape[:2], t["tile"], t["overlap"], t["halo"], t["ramp"]))
            probs = softmax(classifier({"image": tiles})["logits"].astype(np.float64))
            own = RoutePolicy().choose(switch, probs)
            assert RoutePolicy(vote=True).vote_of(np.bincount(own, minlength=len(DEGRADATIONS))) == index, \
                (d, path.name)
            tile_hits.append(float((own == index).mean()))
        assert np.mean(tile_hits) >= 0.9, (d, tile_hits)


def test_checkpoint_of_another_architecture_or_q_beyond_the_ranking(tmp_path, run_cli):
    dncnn = DnCNN(channels=3, depth=5)
    own = lambda p: save_checkpoint(p, dncnn.state_dict(), "dncnn", dncnn.config())  # noqa: E731
    for path, save in [(tmp_path / "own.pth", own),
                       (tmp_path / "plain.pth", lambda p: torch.save(dncnn.state_dict(), p))]:
        save(path)
        result = run_cli("export", "allinone", "--weights", path, "-o", tmp_path / "b")
        assert result.exit_code == 1 and result.stderr.startswith("error: ")
        assert "'dncnn' model, not 'allinone'" in result.stderr or "does not fit 'allinone'" in result.stderr
        assert not (tmp_path / "b").exists()
    with pytest.raises(EdgeRestoreError, match=r"q = 10% is not one the checkpoint was trained at \(1%, 3%, 5%\)"):
        create_model("allinone", q=10)


def test_unknown_degradation_is_one_clear_error(train_data, tmp_path, run_cli):
    result = run_cli("train", "allinone", "--data", train_data, "-o", tmp_path / "x.pth",
                     "--degradations", "rain,snow", *TINY)
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unknown degradation 'snow'; choose from rain, blur, noise"
    with pytest.raises(EdgeRestoreError, match="unknown degradation 'haze'"):
        AllInOne(degradations=["rain", "haze"])
    with pytest.raises(EdgeRestoreError, match="not one of the degradations"):
        AllInOne(degradations=["rain", "blur"], filters={"noise": [[0, 0]]})
    with pytest.raises(EdgeRestoreError, match="is not a .layer, output channel."):
        AllInOne(filters={d: [[99, 0]] for d in DEGRADATIONS})


# ---------------------------------------------------------------------------- soft routing
def soft_image() -> np.ndarray:
    return (structured(1, 300, 340) + np.random.default_rng(2).normal(0, 0.1, (300, 340, 3))).astype(np.float32)


def diverse_classifier(model: AllInOne, image: np.ndarray) -> AllInOne:
    """A random classifier ranks every tile alike; make its logits random projections of the
    tiles' standardised pooled features, so tiles of ``image`` rank the branches differently."""
    from edgerestore.runtime.tiling import TileGrid

    t = model.default_tiling()
    tiles = torch.from_numpy(extract(image, TileGrid(*image.shape[:2], t.tile, t.overlap, t.halo, t.ramp)))
    classifier = model.classifier
    with torch.no_grad():
        y = tiles
        for conv in classifier.convs:
            y = torch.relu(conv(y))
        pooled = y.mean((2, 3))
        mean, std = pooled.mean(0), pooled.std(0) + 1e-6
        weight = torch.randn(classifier.fc.out_features, len(mean), generator=torch.Generator().manual_seed(4)) / std
        classifier.fc.weight.copy_(weight)
        classifier.fc.bias.copy_(-weight @ mean)
    return model


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from edgerestore.export import write_bundle

    model = diverse_classifier(tiny()[0], soft_image())
    out = tmp_path_factory.mktemp("bundles") / "allinone_tiny"
    write_bundle(model, "allinone", out)
    return model, out


def torch_blend(model: AllInOne, tiles: np.ndarray, vote: bool = False) -> np.ndarray:
    x = torch.from_numpy(tiles)
    with torch.no_grad():
        probs = softmax(model.classifier(x).numpy().astype(np.float64))
        outputs = np.stack([model.fold(d)(x).numpy() for d in DEGRADATIONS], 1)  # N, branches, C, H, W
    if vote:
        probs = np.broadcast_to(probs.mean(0), probs.shape)
    top = np.argsort(-probs, 1, kind="stable")[:, :2]
    weights = np.take_along_axis(probs, top, 1)
    weights /= weights.sum(1, keepdims=True)
    rows = np.arange(len(x))[:, None]
    return (weights[..., None, None, None] * outputs[rows, top]).sum(1), top


@pytest.mark.parametrize("policy", ["soft", "soft-vote"])
def test_soft_mode_blends_the_two_most_probable_branches(tiny_bundle, policy):
    model, bundle = tiny_bundle
    image = soft_image()
    session = Session(bundle, backend="onnxruntime", route_policy=policy)
    calls = {}
    session.stage_hooks.append(lambda s, rows, f, o, t: calls.__setitem__(s, calls.get(s, 0) + len(rows)))
    route = session.run(image, clip=False)
    restored, grid = route.image, route.grid
    expected, top = torch_blend(model, extract(image, grid), vote=policy == "soft-vote")
    np.testing.assert_allclose(restored, merge(expected.astype(np.float32), grid), atol=1e-4)
    assert (route.decisions["degradation"] == top[:, 0]).all()
    if policy == "soft":
        assert len(set(map(tuple, top.tolist()))) > 1, "the test needs tiles with different top-2 branches"
    assert sum(calls.get(d, 0) for d in DEGRADATIONS) == 2 * len(grid)  # two plain networks per tile
    assert np.isclose(route.mac_ratio, 1.0)  # ... which is the soft mode's full path
    hard = Session(bundle, backend="onnxruntime")
    hard_route = hard.run(image)
    branch = hard.bundle.stages["rain"].macs_per_pixel * grid.tile ** 2
    assert np.isclose(route.full_macs - hard_route.full_macs, branch)


def test_blending_refuses_branches_that_write_other_variables(tiny_bundle, tmp_path):
    import shutil

    _, bundle = tiny_bundle
    edited = tmp_path / "edited"
    shutil.copytree(bundle, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    branch = manifest["plan"][1]["branches"][0]
    branch["steps"].append({"op": "run", "stage": "rain", "in": {"image": "image"}, "out": {"restored": "extra"}})
    (edited / "manifest.json").write_text(json.dumps(manifest))
    image = structured(0).astype(np.float32)
    Session(edited, backend="onnxruntime").run(image)  # hard decisions do not blend: fine
    with pytest.raises(EdgeRestoreError, match="blends image but its branch 'rain' also writes 'extra'"):
        Session(edited, backend="onnxruntime", route_policy="soft").run(image)
    with pytest.raises(EdgeRestoreError, match="--blend must be at least 1"):
        RoutePolicy(blend=0)


def test_restore_command_soft_policy(tiny_bundle, tmp_path, run_cli):
    import cv2

    _, bundle = tiny_bundle
    source = tmp_path / "in.png"
    cv2.imwrite(str(source), (structured(3)[..., ::-1] * 255).round().astype(np.uint8))
    result = run_cli("restore", bundle, source, "-o", tmp_path / "out.png", "--route-policy", "soft",
                     "--backend", "onnxruntime", "--route-map", tmp_path / "map.png", "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").is_file() and (tmp_path / "map.png").is_file()
    report = json.loads(result.stdout)
    assert report["gmac_per_image"] == pytest.approx(report["full_path_gmac_per_image"])


# ---------------------------------------------------------------------------- INT8
def test_route_aware_int8_calibration_of_the_bundle(tiny_bundle, tmp_path):
    import cv2

    from edgerestore.calibration import FolderSplit, Int8Options
    from edgerestore.export import write_bundle

    model, _ = tiny_bundle
    data = tmp_path / "calib"
    data.mkdir()
    for i in range(6):
        cv2.imwrite(str(data / f"{i}.png"), (structured(i, 140, 150)[..., ::-1] * 255).round().astype(np.uint8))
    split = FolderSplit(data, "rain:0.002,blur:2,gaussian:25", count=3, holdout=3, crop=128)
    assert split.specs() == ["rain:0.002", "blur:2", "gaussian:25"]
    out = tmp_path / "int8"
    report = write_bundle(model, "allinone", out, int8=Int8Options(split, method="minmax")).int8
    bundle = Bundle(out)
    assert bundle.precisions == ["int8", "fp32"]
    calibration = json.loads((out / "calibration.json").read_text())
    routed = calibration["routing"]["degradation"]
    assert sum(routed) == report.calibration_tiles
    for index, d in enumerate(DEGRADATIONS):
        stage = calibration["stages"][d]
        assert stage["samples_route_agnostic"] == report.calibration_tiles  # every tile through every branch
        if routed[index]:
            assert stage["samples"] == routed[index] and stage["calibration"] == "route-aware"
        else:  # no calibration tile was routed there: route-agnostic ranges, and it says so
            assert stage["calibration"] == "route-agnostic" and d in calibration["route_aware_fallback"]
    assert calibration["stages"]["classifier"]["samples"] == report.calibration_tiles
    int8 = Session(out, backend="onnxruntime", precision="int8").run(structured(5).astype(np.float32), clip=False).image
    assert np.isfinite(int8).all()


# ---------------------------------------------------------------------------- rain
def test_rain_follows_the_physical_model():
    clean = structured(0, 96, 128)
    veil = degrade.parse("rain:0").apply(clean)  # no streaks: x = T * gt + (1 - T) * A
    slope = np.polyfit(clean.ravel(), veil.ravel(), 1)
    t, light = slope[0], slope[1] / (1 - slope[0])
    assert 0.8 <= t <= 0.95 and 0.8 <= light <= 1.0
    np.testing.assert_allclose(veil, t * clean + (1 - t) * light, atol=1e-9)
    rainy = degrade.parse("rain:0.004").apply(clean)
    streaks = (rainy - veil) / t  # S, the same in every channel
    assert streaks.min() >= -1e-9 and streaks.max() <= 1 + 1e-9 and 0.02 < (streaks[..., 0] > 0.05).mean() < 0.5
    np.testing.assert_allclose(streaks[..., 0], streaks[..., 2], atol=1e-9)
    np.testing.assert_array_equal(rainy, degrade.parse("rain:0.004").apply(clean))  # seeded
    assert not np.array_equal(rainy, degrade.parse("rain:0.004", seed=1).apply(clean))
    assert any(line.strip().startswith("rain:DENSITY") for line in degrade.spec_help().splitlines())
    with pytest.raises(EdgeRestoreError, match="rain DENSITY must be in 0..1"):
        degrade.parse("rain:2")


def test_blend_check_sees_writes_and_stops_nested_in_switches_loops_and_resizes():
    from edgerestore.runtime.executor import _writes, _stops

    inner = {"op": "switch", "name": "inner", "logits": "l", "branches": [
        {"steps": [{"op": "run", "stage": "a", "in": {"x": "image"}, "out": {"y": "x"}},
                   {"op": "resize", "in": "x", "out": "small", "scale": 0.5}]},
        {"stop": True, "steps": []}]}
    loop = {"op": "loop", "var": "s", "values": [0.5, 1.0],
            "body": [{"op": "run", "stage": "b", "in": {"x": "image"}, "out": {"y": "z"}}]}
    assert _writes([inner, loop]) == {"x", "small", "z"}
    assert _stops([loop, inner]) and not _stops([loop])
    assert _stops([{"op": "loop", "var": "s", "values": [1], "body": [inner]}])
