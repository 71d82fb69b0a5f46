"""Worker protocol version 2 (docs/protocol.md): message constructors, request validation, error codes. Version 2
adds the `prompt` of a segment job (lesions given by a point or a box); a version-1 job (no prompt) is still
accepted and answered as before."""

from __future__ import annotations

import json
import math

PROTOCOL_VERSION = 2

BAD_REQUEST = "bad_request"
# a job_id already queued or running: the refusal of the new request only, not an end of the job holding that ID
DUPLICATE_JOB = "duplicate_job"
UNKNOWN_MODEL = "unknown_model"
BAD_MODEL = "bad_model"
BAD_VOLUME = "bad_volume"
MODEL_MISMATCH = "model_mismatch"
OUT_OF_MEMORY = "out_of_memory"
DEVICE_UNAVAILABLE = "device_unavailable"
INTERNAL = "internal"
WORKER_CRASHED = "worker_crashed"  # reported by the client itself when the worker process ends unexpectedly
ERROR_CODES = frozenset({BAD_REQUEST, DUPLICATE_JOB, UNKNOWN_MODEL, BAD_MODEL, BAD_VOLUME, MODEL_MISMATCH,
                         OUT_OF_MEMORY, DEVICE_UNAVAILABLE, INTERNAL, WORKER_CRASHED})

DEVICES = ("auto", "cuda", "cpu")
MAX_SAMPLES = 256
MAX_LESIONS = 64
SEGMENT_DEFAULTS = {"model": None, "samples": 8, "steps": None, "seed": 0, "device": "auto", "batch_size": None,
                    "roi_ijk": None, "slice_axis": None, "prompt": None, "allow_irregular_slices": False,
                    "max_volume_bytes": None}
PROMPT_DEFAULTS = {"stop_after_empty": 2, "max_slices": None, "scale": None}
SCALE_RANGE = (0.125, 16.0)  # a forced crop scale (x the model's in_plane_voxels)
# A lesion is given by a point in voxel coordinates (continuous IJK), a point in mm (RAS, converted by the worker
# with the volume's geometry), or a box of voxel indices [i0, j0, k0, i1, j1, k1] (end exclusive).
PROMPT_KINDS = ("point_ijk", "point_ras", "box_ijk")


class ProtocolError(ValueError):
    """A request that cannot be carried out; ``code`` is an error code, ``job_id`` the request's job (or None)."""

    def __init__(self, message: str, code: str = BAD_REQUEST, job_id: str | None = None):
        super().__init__(message)
        self.code, self.job_id = code, job_id


def encode(message: dict) -> str:
    """One JSON line (no NaN/inf, ASCII-safe) for a message."""
    return json.dumps(message, allow_nan=False, separators=(",", ":")) + "\n"


def _finite_or_none(value):
    return None if value is None or not math.isfinite(value) else round(float(value), 3)


def hello(torch_version: str, cuda: str | None, device: str, gpu_name: str | None, gpu_free_mb: int | None,
          models: list[dict]) -> dict:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "torch": torch_version, "cuda": cuda, "device": device,
            "gpu_name": gpu_name, "gpu_free_mb": gpu_free_mb, "models": models}


def accepted(job_id: str, shape_kji, ijk_to_ras, slice_axis: int, roi_ijk, model: str, device: str,
             total: int, prompt: dict | None, parameters: dict, warnings=()) -> dict:
    """``total``: the slices of the job; with a ``prompt``, the most slices the propagation may visit.
    ``parameters``: what the job runs with, defaults resolved (samples, steps, seed, sampler). ``warnings``: what
    the user must be told about the input (an irregular DICOM series segmented anyway)."""
    volume = {"shape_kji": [int(n) for n in shape_kji], "ijk_to_ras": [[float(v) for v in row] for row in ijk_to_ras],
              "slice_axis": int(slice_axis), "roi_ijk": [int(v) for v in roi_ijk]}
    return {"type": "accepted", "job_id": job_id, "volume": volume, "model": model, "device": device,
            "total": int(total), "prompt": prompt, "warnings": [str(w) for w in warnings], **parameters}


SAMPLES_ARE = {True: "3D hypotheses (sample n of a slice is conditioned on sample n of the slice before it)",
               False: "per-slice draws (sample n of two slices are independent: not a 3D hypothesis)"}


def samples_are(coherent: bool) -> str:
    """What a job's sample n is across slices (``accepted``'s ``samples_are``)."""
    return SAMPLES_ARE[coherent]


def progress(job_id: str, phase: str, done: int, total: int, eta_s: float | None,
             lesion_scale: dict | None = None) -> dict:
    """``lesion_scale``: a prompt job's lesion whose crop scale was just chosen (sdseg.propagation.LesionReport:
    ``lesion``, ``scale``, ``scale_source``, ``scale_score``, ``scales_tried``), sent once per lesion before its
    first slice."""
    message = {"type": "progress", "job_id": job_id, "phase": phase, "done": done, "total": total,
               "eta_s": _finite_or_none(eta_s)}
    if lesion_scale is not None:
        message.update({key: value for key, value in lesion_scale.items() if key != "stops"})
    return message


def slice_message(job_id: str, index: int, file: str, done: int, total: int, eta_s: float | None,
                  lesion: int | None = None, box_ijk=None) -> dict:
    """A prompt job's slice names its ``lesion`` (0-based) and the IJK ``box_ijk`` its arrays cover; a whole-ROI
    slice has neither (its arrays cover the ROI)."""
    message = {"type": "slice", "job_id": job_id, "index": int(index), "file": file, "done": done, "total": total,
               "eta_s": _finite_or_none(eta_s)}
    if lesion is not None:
        message.update(lesion=int(lesion), box_ijk=[int(v) for v in box_ijk])
    return message


def done(job_id: str, slices: int, seconds: float, samples: int, model: str, device: str, model_cached: bool,
         lesions: list[dict] | None = None) -> dict:
    """``model_cached``: the job reused the model already in memory (False: the job loaded it). ``lesions`` (a
    prompt job): per lesion ``{"slices": visited, "found_slices": slices with a non-empty consensus}``, for a point
    ``found_on_clicked_slice`` (whether the clicked slice's consensus is non-empty), and its
    sdseg.propagation.LesionReport (``scale``, ``scale_source``, ``scale_score``, ``scales_tried``, ``stops``)."""
    summary = {"samples": samples, "model": model, "device": device, "model_cached": bool(model_cached)}
    if lesions is not None:
        summary["lesions"] = lesions
    return {"type": "done", "job_id": job_id, "slices": slices, "seconds": round(seconds, 3), "summary": summary}


def cancelled(job_id: str, slices: int) -> dict:
    return {"type": "cancelled", "job_id": job_id, "slices": slices}


def error(job_id: str | None, code: str, message: str) -> dict:
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return {"type": "error", "job_id": job_id, "code": code, "message": message}


def pong(ping_id) -> dict:
    return {"type": "pong", "id": ping_id}


def _integer(request: dict, key: str, low: int, high: int | None = None, nullable: bool = False,
             job_id: str | None = None):
    value = request[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise ProtocolError(f"'{key}' must be an integer {bounds}{' or null' if nullable else ''}, got {value!r}",
                            job_id=job_id or request.get("job_id"))
    return value


def _segment(request: dict) -> dict:
    job = {**SEGMENT_DEFAULTS, **{k: v for k, v in request.items() if v is not None or k not in SEGMENT_DEFAULTS}}
    job_id = job.get("job_id")
    for key in ("job_id", "volume", "job_dir"):
        if not isinstance(job.get(key), str) or not job[key]:
            raise ProtocolError(f"'segment' needs '{key}' (a non-empty string)", job_id=job_id)
    if job["model"] is not None and (not isinstance(job["model"], str) or not job["model"]):
        raise ProtocolError("'model' must be a model name or folder (string) or null", job_id=job_id)
    _integer(job, "samples", 1, MAX_SAMPLES)
    _integer(job, "steps", 1, nullable=True)
    _integer(job, "seed", 0, 2 ** 63 - 1)
    _integer(job, "batch_size", 1, nullable=True)
    _integer(job, "slice_axis", 0, 2, nullable=True)
    _integer(job, "max_volume_bytes", 1, nullable=True)
    if not isinstance(job["allow_irregular_slices"], bool):
        raise ProtocolError("'allow_irregular_slices' must be true or false", job_id=job_id)
    if job["device"] not in DEVICES:
        raise ProtocolError(f"'device' must be one of {', '.join(DEVICES)}, got {job['device']!r}", job_id=job_id)
    roi = job["roi_ijk"]
    if roi is not None and not _integers(roi, 6):
        raise ProtocolError(f"'roi_ijk' must be null or 6 integers [i0, j0, k0, i1, j1, k1], got {roi!r}",
                            job_id=job_id)
    if job["prompt"] is not None:
        job["prompt"] = _prompt(job["prompt"], job_id)
    return job


def _integers(value, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(not isinstance(v, bool) and isinstance(v, int) for v in value))


def _prompt(prompt, job_id) -> dict:
    """The validated `prompt` of a segment job, its defaults filled in."""
    if not isinstance(prompt, dict) or not isinstance(prompt.get("lesions"), list) or not (
            1 <= len(prompt["lesions"]) <= MAX_LESIONS):
        raise ProtocolError(f"'prompt' must be null or an object with 'lesions': a list of 1 to {MAX_LESIONS} "
                            "points or boxes", job_id=job_id)
    lesions = []
    for number, lesion in enumerate(prompt["lesions"], start=1):
        given = [key for key in PROMPT_KINDS if isinstance(lesion, dict) and lesion.get(key) is not None]
        if len(given) != 1:
            raise ProtocolError(f"prompt lesion {number} must have exactly one of {', '.join(PROMPT_KINDS)}",
                                job_id=job_id)
        key, value = given[0], lesion[given[0]]
        if key == "box_ijk":
            if not _integers(value, 6):
                raise ProtocolError(f"prompt lesion {number}: 'box_ijk' must be 6 integers [i0, j0, k0, i1, j1, "
                                    f"k1], got {value!r}", job_id=job_id)
            lesions.append({key: value})
        elif isinstance(value, list) and len(value) == 3 and all(
                not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) for v in value):
            lesions.append({key: [float(v) for v in value]})
        else:
            raise ProtocolError(f"prompt lesion {number}: '{key}' must be 3 finite numbers, got {value!r}",
                                job_id=job_id)
    checked = {**PROMPT_DEFAULTS, **{k: v for k, v in prompt.items() if v is not None and k in PROMPT_DEFAULTS},
               "lesions": lesions}
    _integer(checked, "stop_after_empty", 1, job_id=job_id)
    _integer(checked, "max_slices", 1, nullable=True, job_id=job_id)
    scale = checked["scale"]
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]):
        raise ProtocolError(f"'scale' must be null (search) or a number from {SCALE_RANGE[0]} to {SCALE_RANGE[1]}, "
                            f"got {scale!r}", job_id=job_id)
    return checked


def parse_request(line: str) -> dict:
    """A validated client request from one line; ``segment`` gets its defaults filled in.

    Raises :class:`ProtocolError` (code ``bad_request``) for anything malformed. Unknown fields are ignored.
    """
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ProtocolError(f"not a JSON object: {err}; send one JSON object per line") from err
    except RecursionError:
        raise ProtocolError("JSON nested too deeply; send one flat JSON object per line") from None
    if not isinstance(request, dict):
        raise ProtocolError("a request must be a JSON object with a 'type'")
    kind = request.get("type")
    job_id = request.get("job_id") if isinstance(request.get("job_id"), str) else None
    if kind == "segment":
        return _segment(request)
    if kind == "cancel":
        if job_id is None:
            raise ProtocolError("'cancel' needs 'job_id' (a string)")
        return request
    if kind == "ping":
        return {"type": "ping", "id": request.get("id")}
    if kind == "shutdown":
        return request
    raise ProtocolError(f"unknown request type {kind!r}; expected segment, cancel, ping or shutdown", job_id=job_id)
