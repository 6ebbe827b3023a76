"""Who made the results: algorithm identification (TID 4019), Contributing Equipment (IHE AIR),
and the research-use wording every object carries."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import highdicom as hd
from pydicom.dataset import Dataset

from common.inputs import NODE_MANUFACTURER as MANUFACTURER
from model.bundle_info import BundleInfo
from worker.results.codes import AI_FAMILY, PROCESSING_EQUIPMENT

RESEARCH_USE = "RESEARCH USE ONLY - not a medical device, not for diagnosis"


def software_version() -> str:
    try:
        return version("molsub-node")
    except PackageNotFoundError:
        return "0+unknown"


def disclaimer(bundle: BundleInfo) -> str:
    """The statement every output carries; says UNTRAINED when the weights are random, and
    SYNTHETIC when the model learnt from synthetic data only."""
    text = RESEARCH_USE
    if bundle.untrained:
        text += ". UNTRAINED model: predictions are random and meaningless"
    elif bundle.synthetic_training_data:
        text += (
            ". Model trained on SYNTHETIC data only: predictions are meaningful on synthetic "
            "studies, not on patients"
        )
    return text


def series_description(kind: str, bundle: BundleInfo) -> str:
    """<= 64 characters, as a viewer's series list shows it."""
    flag = " UNTRAINED" if bundle.untrained else ""
    if not bundle.untrained and bundle.synthetic_training_data:
        flag = " SYNTHETIC-TRAINED"
    return f"molsub {kind} RESEARCH USE ONLY{flag}"[:64]


def algorithm_identification(bundle: BundleInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019: bundle name and version; the weights digest and profile as parameters."""
    return hd.sr.AlgorithmIdentification(
        name=bundle.display_name[:64],
        version=bundle.version[:64],
        parameters=[
            f"weights sha256 {bundle.digest}",
            f"preprocessing {bundle.profile}, input {bundle.input_size}, bound {bundle.bound_size}",
        ],
        family=AI_FAMILY,
        manufacturer=MANUFACTURER,
    )


def contributing_equipment(bundle: BundleInfo) -> hd.ContributingEquipment:
    """The algorithm as equipment (IHE AIR): its Device UID changes whenever the weights do."""
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=bundle.display_name[:64],
        software_versions=[software_version(), bundle.version, bundle.digest[:16]],
        device_serial_number=bundle.digest[:16],
        contribution_description=f"AI molecular subtype prediction. {RESEARCH_USE}"[:64],
    )
    equipment.DeviceUID = bundle.device_uid
    return equipment


def add_research_use(ds: Dataset, bundle: BundleInfo) -> None:
    """Where viewers show free text: image comments."""
    ds.ImageComments = disclaimer(bundle)[:10240]
