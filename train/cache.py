"""Network inputs of manifest rows, computed once with the node's own crop and kept on disk.

Every crop is ``model.preprocess.rois.lesion_input``, so what is trained is what the node
serves. A crop's key is a sha256 over what determines it: the image and mask files' contents,
the segment, the profile, bound and input sizes, and ``CACHE_VERSION`` (raise it when the
preprocessing changes in a way the other inputs do not show). Files are float32 ``.npy`` named
``<key>-<sha256 of the file, 16 hex>.npy``: a file whose bytes do not match its name is corrupt
and is recomputed, never trusted. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from tqdm import tqdm

from common.durable import atomic_write_bytes
from model.preprocess.rois import lesion_input
from model.profiles import Profile
from train.manifest import ManifestRow, file_sha256
from train.masks import RoiMasks

CACHE_VERSION = 1
_CHECK_CHARS = 16

log = logging.getLogger(__name__)

ReadImage = Callable[[Path], Dataset]


class CropError(ValueError):
    """A row whose crop cannot be computed; names its case_id and image file."""


class CropCache:
    """Crops of manifest rows under ``root`` (created on first write), one file per crop."""

    def __init__(self, root: Path, *, read_image: ReadImage = pydicom.dcmread) -> None:
        self.root = Path(root)
        self._read_image = read_image
        self._digests: dict[tuple[Path, int, int], str] = {}

    def crops(
        self,
        rows: Sequence[ManifestRow],
        *,
        profile: Profile | str,
        bound_size: int,
        input_size: int,
        progress: bool = True,
    ) -> np.ndarray:
        """N x input_size x input_size float32, in the order of ``rows``.

        Missing crops are computed reading each image file once, however many rows use it
        (pydicom keeps the decoded pixels on the dataset, so it is decoded once too).
        """
        profile = Profile.parse(profile)
        out = np.empty((len(rows), input_size, input_size), dtype=np.float32)
        keys = [
            self.key(r, profile=profile, bound_size=bound_size, input_size=input_size) for r in rows
        ]
        missing: dict[Path, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            found = self._load(key, input_size)
            if found is None:
                missing[rows[i].image_path].append(i)
            else:
                out[i] = found
        todo = sum(len(v) for v in missing.values())
        masks = RoiMasks()
        with tqdm(
            total=todo, desc="cropping", unit="crop", disable=not progress or not todo
        ) as bar:
            for image_path, indices in missing.items():
                image = self._read_image(image_path)
                for i in indices:
                    out[i] = self._compute(rows[i], image, masks, profile, bound_size, input_size)
                    self._store(keys[i], out[i])
                    bar.update()
        return out

    def key(
        self, row: ManifestRow, *, profile: Profile | str, bound_size: int, input_size: int
    ) -> str:
        """The sha256 (hex) naming a row's crop for these settings."""
        fields = {
            "version": CACHE_VERSION,
            "image": self._digest(row.image_path),
            "mask": self._digest(row.roi_path),
            "segment": row.segment,
            "profile": Profile.parse(profile).value,
            "bound_size": int(bound_size),
            "input_size": int(input_size),
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def path_for(self, key: str) -> Path | None:
        """The file holding ``key``'s crop, if one is stored (valid or not)."""
        folder = self.root / key[:2]
        if not folder.is_dir():
            return None
        return next((p for p in sorted(folder.glob(f"{key}-*.npy")) if p.is_file()), None)

    def _digest(self, path: Path) -> str:
        """A file's content digest, remembered while its size and mtime stay the same."""
        stat = path.stat()
        memo = (path, stat.st_size, stat.st_mtime_ns)
        if memo not in self._digests:
            self._digests[memo] = file_sha256(path)
        return self._digests[memo]

    def _compute(
        self,
        row: ManifestRow,
        image: Dataset,
        masks: RoiMasks,
        profile: Profile,
        bound_size: int,
        input_size: int,
    ) -> np.ndarray:
        try:
            mask = masks.mask(row.roi_path, image, row.segment)
            return lesion_input(
                image, mask, profile=profile, bound_size=bound_size, input_size=input_size
            )
        except ValueError as exc:  # MaskError, InputError: run `molsub dataset check` first
            raise CropError(f"case {row.case_id} ({row.image_path}): {exc}") from exc

    def _load(self, key: str, input_size: int) -> np.ndarray | None:
        path = self.path_for(key)
        while path is not None:
            crop = _read_verified(path, input_size)
            if crop is not None:
                return crop
            log.warning("cache file %s is corrupt: recomputing it", path)
            path.unlink(missing_ok=True)
            path = self.path_for(key)
        return None

    def _store(self, key: str, crop: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(crop, dtype=np.float32), allow_pickle=False)
        data = buf.getvalue()
        check = hashlib.sha256(data).hexdigest()[:_CHECK_CHARS]
        atomic_write_bytes(self.root / key[:2] / f"{key}-{check}.npy", data)


def _read_verified(path: Path, input_size: int) -> np.ndarray | None:
    """The crop in ``path`` if its bytes match the check in its name and its shape is right."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    check = path.stem.rpartition("-")[2]
    if hashlib.sha256(data).hexdigest()[:_CHECK_CHARS] != check:
        return None
    try:
        crop = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if crop.dtype != np.float32 or crop.shape != (input_size, input_size):
        return None
    return crop
