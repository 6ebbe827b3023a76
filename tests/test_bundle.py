"""Model bundles: writing, verifying, loading, and refusing tampered or malformed bundles."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import UID

from common.errors import BundleError
from model.bundle import init_untrained, load_bundle, write_bundle
from model.bundle_info import BundleInfo, read_bundle_info
from model.network import build_densenet121_cbam
from model.tasks import TASK_NAMES, TASKS

INPUT = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "seed0"
    init_untrained(out, seed=0)
    return out


def _outputs(path: Path) -> dict[str, torch.Tensor]:
    bundle = load_bundle(path)
    with torch.no_grad():
        return {task: net(INPUT) for task, net in bundle.networks.items()}


def _link_copy(src: Path, dst: Path) -> Path:
    """A bundle copy whose weights are symlinks (cheap) and whose bundle.json is editable."""
    dst.mkdir()
    for item in src.iterdir():
        if item.name == "bundle.json":
            shutil.copy(item, dst / item.name)
        else:
            (dst / item.name).symlink_to(item)
    return dst


def test_init_untrained_writes_a_loadable_bundle(untrained: Path) -> None:
    info = read_bundle_info(untrained)
    assert info.untrained is True
    assert info.display_name == "molsub DenseNet121-CBAM untrained 0.0.0 UNTRAINED"
    assert info.profile == "default" and info.input_size == 224 and info.bound_size == 100
    assert list(info.tasks) == list(TASK_NAMES)
    assert all(info.tasks[t] == TASKS[t].class_names for t in TASK_NAMES)
    assert info.provenance["seed"] == 0

    bundle = load_bundle(untrained)
    assert bundle.info == info
    for task, net in bundle.networks.items():
        assert not net.training
        assert next(net.parameters()).device.type == "cpu"
        with torch.no_grad():
            assert net(INPUT).shape == (2, TASKS[task].num_classes)


def test_same_seed_reproduces_weights_and_outputs(untrained: Path, tmp_path: Path) -> None:
    again = init_untrained(tmp_path / "again", seed=0)
    assert again.digest == read_bundle_info(untrained).digest
    first, second = _outputs(untrained), _outputs(tmp_path / "again")
    for task in TASK_NAMES:
        torch.testing.assert_close(first[task], second[task], rtol=0, atol=0)


def test_other_seed_changes_digest_and_device_uid(untrained: Path, tmp_path: Path) -> None:
    base = read_bundle_info(untrained)
    other = init_untrained(tmp_path / "seed1", seed=1)
    assert other.digest != base.digest
    assert other.device_uid != base.device_uid
    for info in (base, other):
        assert info.device_uid.startswith("2.25.")
        assert UID(info.device_uid).is_valid
        assert len(info.device_uid) <= 64


def test_digest_changes_when_one_weight_changes(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = build_densenet121_cbam(2)
    first = write_bundle(tmp_path / "a", {"tn": net}, name="t", version="1", untrained=False,
                         provenance={})  # fmt: skip
    with torch.no_grad():
        net.classifier.bias[0] += 1e-3
    second = write_bundle(tmp_path / "b", {"tn": net}, name="t", version="1", untrained=False,
                          provenance={})  # fmt: skip
    assert first.weights_sha256["tn"] != second.weights_sha256["tn"]
    assert first.digest != second.digest and first.device_uid != second.device_uid
    assert UID(second.device_uid).is_valid
    assert second.display_name == "molsub DenseNet121-CBAM t 1"  # trained: no UNTRAINED mark


def test_tampered_weights_byte_is_refused_naming_the_file(untrained: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(untrained, copy)
    weights = copy / "her2.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    expected = read_bundle_info(untrained).weights_sha256["her2"]
    for reader in (read_bundle_info, load_bundle):
        with pytest.raises(BundleError, match=r"her2\.pt: sha256 mismatch") as err:
            reader(copy)
        assert expected in str(err.value)


def test_missing_weights_file_is_refused(untrained: Path, tmp_path: Path) -> None:
    copy = _link_copy(untrained, tmp_path / "missing")
    (copy / "tn.pt").unlink()
    with pytest.raises(BundleError, match=r"tn\.pt: weights file missing"):
        read_bundle_info(copy)
    with pytest.raises(BundleError, match=r"tn\.pt: weights file missing"):
        load_bundle(copy)


def _set(path: tuple[str, ...], value: object) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def _delete(path: tuple[str, ...]) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return edit


def _rename_task(doc: dict) -> None:
    doc["tasks"]["basal"] = doc["tasks"].pop("tn")


BAD_EDITS: dict[str, tuple[Callable[[dict], None], str]] = {
    "future format": (_set(("format_version",), 2), "unknown format_version 2"),
    "format as string": (_set(("format_version",), "1"), "'format_version' must be int"),
    "no name": (_delete(("name",)), "missing field 'name'"),
    "no untrained flag": (_delete(("untrained",)), "missing field 'untrained'"),
    "no preprocessing": (_delete(("preprocessing",)), "missing field 'preprocessing'"),
    "no bound": (_delete(("preprocessing", "bound_size")), "'preprocessing.bound_size'"),
    "bool size": (_set(("preprocessing", "input_size"), True), "must be int, got bool"),
    "unknown profile": (_set(("preprocessing", "profile"), "fancy"), "unknown preprocessing"),
    "unknown task": (_rename_task, "unknown task 'basal'"),
    "no tasks": (_set(("tasks",), {}), "'tasks' is empty"),
    "swapped classes": (
        _set(("tasks", "luminal", "classes"), ["Luminal", "non-Luminal"]),
        "tasks.luminal.classes",
    ),
    "escaping path": (_set(("tasks", "her2", "weights"), "../her2.pt"), "must be 'her2.pt'"),
    "bad digest": (_set(("tasks", "her2", "sha256"), "xyz"), "not 64 lowercase hex"),
    "no digest": (_delete(("tasks", "subtype5", "sha256")), "'tasks.subtype5.sha256'"),
}


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_malformed_bundle_json_is_refused(case: str, untrained: Path, tmp_path: Path) -> None:
    edit, message = BAD_EDITS[case]
    copy = _link_copy(untrained, tmp_path / "bad")
    doc = json.loads((copy / "bundle.json").read_text())
    edit(doc)
    (copy / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="bundle.json") as err:
        read_bundle_info(copy)
    assert message in str(err.value)


def test_unparsable_or_absent_bundle_json_is_refused(untrained: Path, tmp_path: Path) -> None:
    copy = _link_copy(untrained, tmp_path / "broken")
    (copy / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="unreadable JSON"):
        read_bundle_info(copy)
    (copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(copy)


def test_weights_that_do_not_fit_the_task_are_refused(tmp_path: Path) -> None:
    """A correctly hashed file with the wrong class count still fails strict loading."""
    out = tmp_path / "mixed"
    write_bundle(out, {"tn": build_densenet121_cbam(2)}, name="m", version="1", untrained=True,
                 provenance={})  # fmt: skip
    torch.save(build_densenet121_cbam(5).state_dict(), out / "tn.pt")
    doc = json.loads((out / "bundle.json").read_text())
    doc["tasks"]["tn"]["sha256"] = hashlib.sha256((out / "tn.pt").read_bytes()).hexdigest()
    (out / "bundle.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=r"tn\.pt: weights do not fit"):
        load_bundle(out)


def test_write_bundle_refuses_non_empty_dir_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    net = build_densenet121_cbam(2)
    with pytest.raises(BundleError, match="not empty"):
        write_bundle(out, {"her2": net}, name="x", version="1", untrained=True, provenance={})
    info = write_bundle(out, {"her2": net}, name="x", version="2", untrained=True,
                        provenance={"note": "replaced"}, overwrite=True)  # fmt: skip
    assert read_bundle_info(out) == info
    assert info.version == "2" and info.provenance == {"note": "replaced"}
    assert (out / "notes.txt").read_text() == "keep me"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_write_bundle_refuses_unknown_task_and_wrong_head(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="unknown task 'basal'"):
        write_bundle(tmp_path / "a", {"basal": build_densenet121_cbam(2)}, name="x", version="1",
                     untrained=True, provenance={})  # fmt: skip
    with pytest.raises(BundleError, match=r"task 'subtype5' must end in Linear\(\.\.\., 5\)"):
        write_bundle(tmp_path / "b", {"subtype5": build_densenet121_cbam(2)}, name="x",
                     version="1", untrained=True, provenance={})  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bundle_info_survives_an_asdict_round_trip(untrained: Path) -> None:
    """The worker ships BundleInfo between processes as dataclasses.asdict()."""
    info = read_bundle_info(untrained)
    rebuilt = BundleInfo.from_dict(json.loads(json.dumps(dataclasses.asdict(info))))
    assert rebuilt == info and rebuilt.device_uid == info.device_uid


def test_an_ensemble_bundle_averages_its_members_probabilities(tmp_path: Path) -> None:
    """Five folds deployed together: bundle.json lists the members, loading averages them."""
    torch.manual_seed(3)
    members = [build_densenet121_cbam(2) for _ in range(3)]
    single = build_densenet121_cbam(5)
    info = write_bundle(tmp_path / "ens", {"luminal": members, "subtype5": single}, name="e",
                        version="1", untrained=False, provenance={})  # fmt: skip
    doc = json.loads((tmp_path / "ens" / "bundle.json").read_text())
    entry = doc["tasks"]["luminal"]
    assert entry["combine"] == "mean-probability"
    assert [m["weights"] for m in entry["ensemble"]] == [f"luminal.member{i}.pt" for i in (1, 2, 3)]
    assert info.is_ensemble("luminal") and not info.is_ensemble("subtype5")

    bundle = load_bundle(tmp_path / "ens")
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m.eval()(INPUT), 1) for m in members]).mean(0)
        got = torch.softmax(bundle.networks["luminal"](INPUT), 1)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    # Any member changing changes the bundle's identity (device UID), like a single network.
    (tmp_path / "ens2").mkdir()
    members[2].classifier.bias.data += 1
    other = write_bundle(tmp_path / "ens2", {"luminal": members, "subtype5": single}, name="e",
                         version="1", untrained=False, provenance={}, overwrite=True)  # fmt: skip
    assert other.device_uid != info.device_uid

    # A tampered member is refused by name.
    (tmp_path / "ens" / "luminal.member2.pt").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"luminal\.member2\.pt: sha256 mismatch"):
        read_bundle_info(tmp_path / "ens")


def test_a_partial_bundle_runs_gradcam_on_its_own_task(tmp_path: Path) -> None:
    """A bundle trained for one task only (molsub train --task luminal) is usable as is."""
    from model.inference import Predictor

    write_bundle(tmp_path / "lum", {"luminal": build_densenet121_cbam(2)}, name="l",
                 version="1", untrained=False, provenance={})  # fmt: skip
    predictor = Predictor.from_bundle(load_bundle(tmp_path / "lum"), channels_last=False)
    assert predictor.gradcam_task == "luminal"
    maps = predictor.gradcam(INPUT, [1, 0])
    assert maps.shape == (2, 64, 64) and float(maps.max()) > 0


def test_gradcam_of_an_ensemble_is_the_mean_over_its_members(tmp_path: Path) -> None:
    from model.ensemble import ProbabilityEnsemble
    from model.inference import Predictor

    torch.manual_seed(4)
    members = [build_densenet121_cbam(5).eval() for _ in range(2)]
    ensemble = Predictor({"subtype5": ProbabilityEnsemble(members)}, channels_last=False)
    assert len(ensemble._cam_layers) == 2
    maps = ensemble.gradcam(INPUT, [2, 2])
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and float(maps.max()) > 0
