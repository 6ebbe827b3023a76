"""node.toml parsing, environment overrides and validation messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common.settings import InputPolicy, InputSettings, MissingImagesPolicy, NodeConfig
from molsub.config import ConfigError, load_config, to_toml

REPO = Path(__file__).resolve().parents[1]

FULL = """
[node]
ae_title = "NODE1"
host = "0.0.0.0"
port = 104
allowed_calling_aets = ["PACS1", "MG1"]
spool_dir = "spool-here"
study_timeout_s = 30

[model]
bundle = "/opt/bundle"

[queue]
broker_url = "redis://user:secret@redis:6379/0"

[[destinations]]
name = "pacs"
ae_title = "PACS1"
host = "pacs.example"
port = 11113

[[destinations]]
name = "copy"
folder = "out"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    config = load_config(None, env={})
    assert config == NodeConfig()
    assert config.node.host == "127.0.0.1"  # loopback unless opened on purpose
    assert (config.node.ae_title, config.node.port, config.node.study_timeout_s) == (
        "MOLSUB",
        11112,
        600.0,
    )
    assert config.node.allowed_calling_aets == ()
    assert config.queue.broker_url == ""


def test_full_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL), env={})
    assert config.node.ae_title == "NODE1" and config.node.port == 104
    assert config.node.allowed_calling_aets == ("PACS1", "MG1")
    assert config.node.spool_dir == tmp_path / "spool-here"  # relative to the file
    assert config.node.study_timeout_s == 30.0
    assert config.model.bundle == Path("/opt/bundle")
    pacs, copy = config.destinations
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.is_folder) == (
        "PACS1",
        "pacs.example",
        11113,
        False,
    )
    assert copy.is_folder and copy.folder == tmp_path / "out"
    text = config.describe()
    assert "NODE1" in text and "0.0.0.0:104" in text and "PACS1, MG1" in text
    assert "secret" not in text  # broker password redacted
    assert "folder" in text and "pacs.example:11113" in text


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "MOLSUB_NODE_PORT": "2000",
        "MOLSUB_NODE_ALLOWED_CALLING_AETS": "A1, B2",
        "MOLSUB_QUEUE_BROKER_URL": "redis://h:1/0",
        "MOLSUB_MODEL_BUNDLE": "/b",
        "MOLSUB_NODE_STUDY_TIMEOUT_S": "1.5",
    }
    config = load_config(write(tmp_path, FULL), env=env)
    assert config.node.port == 2000
    assert config.node.allowed_calling_aets == ("A1", "B2")
    assert config.queue.broker_url == "redis://h:1/0"
    assert config.model.bundle == Path("/b")
    assert config.node.study_timeout_s == 1.5
    assert (
        load_config(None, env={"MOLSUB_NODE_ALLOWED_CALLING_AETS": ""}).node.allowed_calling_aets
        == ()
    )


def test_deploy_example_loads() -> None:
    example = REPO / "deploy" / "node.toml"
    if not example.exists():
        pytest.skip("deploy/node.toml not present")
    config = load_config(example, env={})
    assert config.node.port == 11112 and len(config.destinations) >= 1


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[node]\nport = 70000\n", {}, "[node] port: must be a TCP port"),
        ("[node]\nport = 'abc'\n", {}, "[node] port: must be an integer"),
        ("", {"MOLSUB_NODE_PORT": "eleven"}, "$MOLSUB_NODE_PORT"),
        ("", {"MOLSUB_NODE_PORT": "70000"}, "[node] port (from $MOLSUB_NODE_PORT): must be a TCP"),
        ("", {"MOLSUB_NODE_STUDY_TIMEOUT_S": "-1"}, "(from $MOLSUB_NODE_STUDY_TIMEOUT_S): must be"),
        ("", {"MOLSUB_NODE_AE_TITLE": "X" * 17}, "[node] ae_title (from $MOLSUB_NODE_AE_TITLE)"),
        (
            "",
            {"MOLSUB_QUEUE_DELIVERY_MAX_RETRIES": "-2"},
            "[queue] delivery_max_retries (from $MOLSUB_QUEUE_DELIVERY_MAX_RETRIES): must be >= 0",
        ),
        ("[node]\nae_title = 'A_TITLE_FAR_TOO_LONG'\n", {}, "[node] ae_title"),
        ("[node]\nprot = 1\n", {}, "unknown key(s) ['prot']"),
        ("[nodes]\n", {}, "unknown section(s) ['nodes']"),
        ("[node]\nstudy_timeout_s = 0\n", {}, "study_timeout_s: must be > 0"),
        ("[[destinations]]\nname = 'x'\nhost = 'h'\n", {}, "needs ae_title, host and port"),
        (
            "[[destinations]]\nname = 'x'\nfolder = 'f'\nport = 1\n",
            {},
            "either folder or ae_title+host+port",
        ),
        ("[node\n", {}, "not valid TOML"),
    ],
)
def test_validation_names_key_and_reason(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), env=env)
    assert message in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_input_policies_default_and_override(tmp_path: Path) -> None:
    defaults = load_config(None, {}).inputs
    assert defaults == InputSettings()
    assert (defaults.mg_for_processing, defaults.breast_tomosynthesis) == ("process", "refuse")
    assert defaults.seg_images_missing == MissingImagesPolicy.TIMEOUT
    path = tmp_path / "node.toml"
    path.write_text('[inputs]\nsecondary_capture = "ignore"\nseg_images_missing = "fail"\n')
    config = load_config(path, {"MOLSUB_INPUTS_MG_FOR_PROCESSING": "Refuse"})
    assert config.inputs.secondary_capture is InputPolicy.IGNORE
    assert config.inputs.seg_images_missing is MissingImagesPolicy.FAIL
    assert config.inputs.mg_for_processing is InputPolicy.REFUSE  # case-insensitive from env
    again = load_config(write_back(load_config(path, {}), tmp_path), {})
    assert again.inputs == load_config(path, {}).inputs  # to_toml writes [inputs] back


def test_own_results_non_lesion_seg_and_min_image_side(tmp_path: Path) -> None:
    defaults = load_config(None, {}).inputs
    assert (defaults.own_results, defaults.non_lesion_seg) == ("ignore", "fail")
    assert defaults.min_image_side == 64
    path = tmp_path / "node.toml"
    path.write_text('[inputs]\nown_results = "fail"\nnon_lesion_seg = "process"\n')
    config = load_config(path, {"MOLSUB_INPUTS_MIN_IMAGE_SIDE": "128"})
    assert config.inputs.own_results is InputPolicy.FAIL
    assert config.inputs.non_lesion_seg is InputPolicy.PROCESS
    assert config.inputs.min_image_side == 128
    assert load_config(write_back(config, tmp_path), {}).inputs == config.inputs
    assert "the node's own results: fail" in config.describe()


def write_back(config: NodeConfig, tmp_path: Path) -> Path:
    """molsub.config.to_toml, as the demo, tests and benches write a node.toml."""
    path = tmp_path / "again.toml"
    path.write_text(to_toml(config))
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[inputs]\nbreast_tomosynthesis = "process"\n', "no model for these images"),
        ('[inputs]\nsecondary_capture = "keep"\n', 'must be one of "process", "refuse"'),
        ('[inputs]\nseg_images_missing = "ignore"\n', 'must be one of "timeout", "fail"'),
        ("[inputs]\nmg_for_processing = 1\n", "[inputs] mg_for_processing"),
        ('[inputs]\nown_results = "refuse"\n', "recognised by their content"),
        ('[inputs]\nown_results = "process"\n', 'use "ignore", "fail"'),
        ('[inputs]\nnon_lesion_seg = "refuse"\n', 'use "process", "ignore", "fail"'),
        ("[inputs]\nmin_image_side = 0\n", "[inputs] min_image_side: must be >= 1"),
        ('[inputs]\nmin_image_side = "big"\n', "[inputs] min_image_side: must be an integer"),
    ],
)
def test_bad_input_policies_name_key_and_choices(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, {})
