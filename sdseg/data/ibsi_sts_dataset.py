"""`sdseg preprocess --source ibsi-sts`: what the sarcoma crops data set adds to the generic 3D one
(sdseg.data.preprocess.build_real_dataset): its modality and reserved-patient record, and, with
``--export-volumes DIR``, the test (or ``--export-split val``) split's whole volumes for a 3D evaluation (``<patient>_<modality>.nrrd`` +
``<patient>_<modality>_label.nrrd`` and ``volumes.csv``)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import SimpleITK as sitk

from sdseg.data.cases import SourceError
from sdseg.data.ibsi_sts import (case_files, collection_folder, modality_names, patients, rasterise_rtstruct)
from sdseg.data.reserved import is_reserved, reserved_rule
from sdseg.volume_io import ijk_to_ras_matrix

VOLUME_LIST = "volumes.csv"


def check_options(args, source_name: str) -> None:
    """Refuse (one line) ``--export-volumes`` with another source or into a folder that is not new or empty."""
    if not args.export_volumes:
        return
    if source_name != "ibsi-sts":
        raise SourceError("--export-volumes writes the test or val patients' volumes of --source ibsi-sts")
    folder = Path(args.export_volumes).expanduser()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SourceError(f"--export-volumes {folder} exists and is not an empty folder; choose a new folder")


def _read_itk(kind: str, image_path: Path, mask_path: Path) -> tuple[sitk.Image, sitk.Image]:
    """The image and its 0/1 mask as SimpleITK images on one grid, read as :func:`sdseg.data.ibsi_sts.read_case`."""
    if kind == "nifti":
        image = sitk.ReadImage(str(image_path))
        mask = sitk.Cast(sitk.ReadImage(str(mask_path)) > 0, sitk.sitkUInt8)
        mask.CopyInformation(image)
        return image, mask
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(image_path)))
    image = reader.Execute()
    mask = sitk.GetImageFromArray(rasterise_rtstruct(mask_path, ijk_to_ras_matrix(image),
                                                     sitk.GetArrayViewFromImage(image).shape))
    mask.CopyInformation(image)
    return image, mask


def export_volumes(root: Path, split_patients: list[str], modality: str, folder: Path) -> list[dict]:
    """Write every patient's (of one split) image and GTV mask of each modality of ``modality`` into ``folder`` as NRRD
    (``<patient>_<modality>.nrrd``, ``<patient>_<modality>_label.nrrd``: a pair `--source pairs` and
    `sdseg-slicer segment` read) and list them in ``volumes.csv``; reserved patients are never written. Returns the
    rows (patient, modality, image, label, read_from)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for patient in split_patients:
        if is_reserved(patient):
            raise SourceError(f"{patient} is reserved ({reserved_rule('STS')}): never exported")
        for name in modality_names(modality):
            kind, image_path, mask_path = case_files(root, patient, name)
            image, mask = _read_itk(kind, image_path, mask_path)
            stem = f"{patient}_{name}"
            sitk.WriteImage(image, str(folder / f"{stem}.nrrd"), True)
            sitk.WriteImage(mask, str(folder / f"{stem}_label.nrrd"), True)
            rows.append({"patient": patient, "modality": name, "image": f"{stem}.nrrd",
                         "label": f"{stem}_label.nrrd", "read_from": kind})
    with open(folder / VOLUME_LIST, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient", "modality", "image", "label", "read_from"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def dataset_record(path, args, splits: dict) -> dict:
    """dataset.json additions: the modality, how many reserved patients were left out, the volumes exported."""
    root = collection_folder(path)
    reserved = [] if args.include_reserved else [p for p in patients(root) if is_reserved(p)]
    record = {"modality": args.modality or "ct",
              "reserved": {"rule": reserved_rule("STS"), "left_out": len(reserved),
                           "included": args.include_reserved}}
    if args.export_volumes:
        folder = Path(args.export_volumes).expanduser()
        existed = folder.exists()
        try:
            rows = export_volumes(root, splits[args.export_split], args.modality or "ct", folder)
        except BaseException:  # a failed or interrupted export leaves the folder as it found it
            shutil.rmtree(folder, ignore_errors=True)
            if existed:
                folder.mkdir()
            raise
        record["exported_volumes"] = {"folder": str(folder.resolve()), "list": VOLUME_LIST, "volumes": len(rows),
                                      "split": args.export_split}
    return record
