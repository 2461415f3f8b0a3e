"""The KServe v2 / Triton HTTP inference protocol, as the live system under test speaks it.

Every model takes one synthetic input `x` (INT32, shape [n, 1]) and answers
two outputs: `y` (the input, echoed) and `batch_id` (INT64, the batch that
served it):

    POST /v2/models/{name}/infer
    {"id": "42", "inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1], "data": [0]}]}
    -> 200 {"model_name": name, "id": "42",
            "outputs": [{"name": "y", "datatype": "INT32", "shape": [1, 1], "data": [<x>]},
                        {"name": "batch_id", "datatype": "INT64", "shape": [1, 1], "data": [<batch>]}]}

Triton's binary tensor extension is spoken both ways: a request whose
`Inference-Header-Content-Length` header says how long its JSON part is
carries input bytes after it (`parameters.binary_data_size`), and outputs
asked for with `binary_data: true` (or every output, with the request's
`binary_data_output: true`, tritonclient's default) come back as raw bytes
after the answer's JSON part. An input of shape [n, 1] is n items of one
request: each item is a task of its own, scheduled like a request of one
(the answer comes once all n have run; its batch_id is -1 when they ran in
different batches).

With `runtime.payload=tensor` a model takes a real input instead: `image`,
FP16, shape [n, 3, 224, 224] (n items of one request), as binary tensor
data only (an image is 301,056 bytes; as JSON numbers it would be about
ten times that); `y` then answers n zeros.

A request the scheduler did not serve answers {"error": "<status>: <reason>"}
with the status's HTTP code (dropped 503, rejected 429, timeout 504,
error 500); a bad request answers 4xx {"error": "<what is wrong>"}.
`outcome()` turns any answer back into (status, reason, batch id), so a
client (the load generator) records exactly what the server decided.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from harness.core import DROPPED, ERROR, OK, REJECTED, TIMEOUT

INPUT = {"name": "x", "datatype": "INT32", "shape": [-1, 1]}
IMAGE = {"name": "image", "datatype": "FP16", "shape": [-1, 3, 224, 224]}   # runtime.payload=tensor
IMAGE_BYTES = 3 * 224 * 224 * 2                  # one item of IMAGE
OUTPUTS = [{"name": "y", "datatype": "INT32", "shape": [-1, 1]},
           {"name": "batch_id", "datatype": "INT64", "shape": [-1, 1]}]
OUTPUT_DTYPES = {"y": np.dtype("<i4"), "batch_id": np.dtype("<i8")}
HTTP_CODE = {OK: 200, DROPPED: 503, REJECTED: 429, TIMEOUT: 504, ERROR: 500}
_STATUS_OF_CODE = {code: status for status, code in HTTP_CODE.items()}
INT32 = (-2**31, 2**31 - 1)
INT64 = (-2**63, 2**63 - 1)
MAX_ITEMS = 1024                 # items of one request (rows of its input)
MAX_COPIES = 1000
HEADER_LENGTH = "Inference-Header-Content-Length"


class BadRequest(Exception):
    """The request is malformed; the message says what is wrong (answered with 400)."""


@dataclass
class InferCall:
    """One parsed infer request."""

    rid: int | None                  # the request id as a number (None: the server numbers it)
    rid_text: str | None             # ... as sent
    values: list[int]                # the input's items, one per row
    copies: list[int] | None = None  # an app request's tasks per graph node (parameters.copies)
    binary: set[str] = field(default_factory=set)     # outputs to answer as raw bytes
    image: memoryview | None = None  # the items' IMAGE bytes (runtime.payload=tensor)
    outputs: list[str] = field(default_factory=lambda: [o["name"] for o in OUTPUTS])


def infer_request(request_id: int | None = None, value: int = 0, copies: list[int] | None = None) -> dict:
    """The body of a valid infer request (the synthetic payload; `copies` for an app: tasks per node)."""
    body = {"inputs": [{"name": INPUT["name"], "datatype": INPUT["datatype"], "shape": [1, 1], "data": [value]}]}
    if request_id is not None:
        body["id"] = str(request_id)
    if copies is not None:
        body["parameters"] = {"copies": list(copies)}
    return body


def parse_infer(data: bytes, json_length: int | None = None, tensor: bool = False) -> InferCall:
    """Validate an infer body (JSON, or a JSON part of `json_length` bytes and binary tensors after it);
    `tensor`: the model takes IMAGE, not the synthetic input."""
    if json_length is not None and not 0 < json_length <= len(data):
        raise BadRequest(f"{HEADER_LENGTH} is {json_length} but the body holds {len(data)} bytes")
    head, tail = (data, b"") if json_length is None else (data[:json_length], data[json_length:])
    try:
        body = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    rid, rid_text = _request_id(body.get("id"))
    parameters = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
    image = None
    if tensor:
        image = _image(body.get("inputs"), data, len(data) - len(tail))
        values = [0] * (len(image) // IMAGE_BYTES)
    else:
        values = _input_values(body.get("inputs"), tail)
    call = InferCall(rid, rid_text, values, copies=_copies(parameters), image=image)
    _requested_outputs(call, body.get("outputs"), bool(parameters.get("binary_data_output", False)))
    return call


def _request_id(rid_text) -> tuple[int | None, str | None]:
    """(number, text) of a request's `id`. A decimal id is the schedule's (our load generator numbers
    its requests so); any other string -- KServe's ids are opaque strings, perf_analyzer sends "" -- is
    echoed back and the server numbers the request itself (None)."""
    if rid_text is None:
        return None, None
    if not isinstance(rid_text, str):
        raise BadRequest(f"'id' must be a string (got {str(rid_text)[:40]})")
    if not (rid_text.isascii() and rid_text.isdecimal()):
        return None, rid_text
    rid = int(rid_text, 10)
    if not INT64[0] <= rid <= INT64[1]:
        raise BadRequest(f"'id' {rid_text[:40]} is outside the 64-bit integer range")
    return rid, rid_text


def _input_values(inputs, tail: bytes) -> list[int]:
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"'inputs' must be a list of one tensor, {INPUT['name']!r}")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != INPUT["name"]:
        raise BadRequest(f"unknown input {str(name)[:40]!r}; the model takes one input {INPUT['name']!r}")
    if tensor.get("datatype") != INPUT["datatype"]:
        raise BadRequest(f"input {name!r} must have datatype {INPUT['datatype']} (got {str(tensor.get('datatype'))[:20]!r})")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and shape[1] == 1 and isinstance(shape[0], int)
            and not isinstance(shape[0], bool) and 1 <= shape[0] <= MAX_ITEMS):
        raise BadRequest(f"input {name!r} must have shape [n, 1] with 1 <= n <= {MAX_ITEMS} (got {str(shape)[:40]})")
    n = shape[0]
    params = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if size != 4 * n or len(tail) != size:
            raise BadRequest(f"input {name!r}: binary_data_size {str(size)[:20]} must be {4 * n} (n INT32 values) "
                             f"and match the {len(tail)} bytes after the JSON part")
        return np.frombuffer(tail, dtype="<i4").tolist()
    if tail:
        raise BadRequest("binary data after the JSON part, but no input says binary_data_size")
    values = tensor.get("data")
    if isinstance(values, list) and values and all(isinstance(v, list) and len(v) == 1 for v in values):
        values = [v[0] for v in values]           # the nested form [[v], ...] is valid JSON tensor data too
    if not isinstance(values, list) or len(values) != n:
        raise BadRequest(f"input {name!r} must hold {n} value(s) in 'data' (got {str(values)[:40]})")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not INT32[0] <= value <= INT32[1]:
            raise BadRequest(f"input {name!r} holds {str(value)[:20]}, not an INT32")
    return values


def _image(inputs, data: bytes, at: int) -> memoryview:
    """The IMAGE bytes of a request (a view of `data` from `at`, the binary part)."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"'inputs' must be a list of one tensor, {IMAGE['name']!r}")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != IMAGE["name"]:
        raise BadRequest(f"unknown input {str(name)[:40]!r}; the model takes one input {IMAGE['name']!r} "
                         f"(FP16 [n, 3, 224, 224])")
    if tensor.get("datatype") != IMAGE["datatype"]:
        raise BadRequest(f"input {name!r} must have datatype FP16 (got {str(tensor.get('datatype'))[:20]!r})")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[1:] == IMAGE["shape"][1:]
            and isinstance(shape[0], int) and not isinstance(shape[0], bool) and 1 <= shape[0] <= MAX_ITEMS):
        raise BadRequest(f"input {name!r} must have shape [n, 3, 224, 224] with 1 <= n <= {MAX_ITEMS} "
                         f"(got {str(shape)[:40]})")
    params = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    size = params.get("binary_data_size")
    if size is None:
        raise BadRequest(f"input {name!r} must come as binary tensor data (parameters.binary_data_size and the "
                         f"{HEADER_LENGTH} header); as JSON numbers an image is about 3 MB")
    if size != shape[0] * IMAGE_BYTES or len(data) - at != size:
        raise BadRequest(f"input {name!r}: binary_data_size {str(size)[:20]} must be {shape[0] * IMAGE_BYTES} "
                         f"({shape[0]} x 3 x 224 x 224 FP16) and match the {len(data) - at} bytes after the JSON part")
    return memoryview(data)[at:]


def _copies(parameters: dict) -> list[int] | None:
    if "copies" not in parameters:
        return None
    copies = parameters["copies"]
    if not isinstance(copies, list) or len(copies) > 64 or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= MAX_COPIES for c in copies):
        raise BadRequest(f"parameters.copies must be a list of task counts per app node, each 0..{MAX_COPIES}")
    return copies


def _requested_outputs(call: InferCall, outputs, binary_default: bool) -> None:
    known = [o["name"] for o in OUTPUTS]
    if outputs is None:
        call.binary = set(known) if binary_default else set()
        return
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") in known for o in outputs):
        raise BadRequest(f"'outputs' may only request {known}")
    call.outputs = [o["name"] for o in outputs]
    for o in outputs:
        params = o.get("parameters") if isinstance(o.get("parameters"), dict) else {}
        if params.get("binary_data", binary_default):
            call.binary.add(o["name"])


def infer_answer(model: str, call: InferCall, batch_id: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a 200 answer to `call`."""
    n = len(call.values)
    data = {"y": call.values, "batch_id": [batch_id] * n}
    outputs, raw = [], []
    for name in call.outputs:
        meta = next(o for o in OUTPUTS if o["name"] == name)
        out = {"name": name, "datatype": meta["datatype"], "shape": [n, 1]}
        if name in call.binary:
            blob = np.asarray(data[name], dtype=OUTPUT_DTYPES[name]).tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            raw.append(blob)
        else:
            out["data"] = data[name]
        outputs.append(out)
    head = {"model_name": model, "model_version": "1", "outputs": outputs}
    if call.rid_text is not None:
        head["id"] = call.rid_text
    text = json.dumps(head, separators=(",", ":")).encode()
    if not raw:
        return text, {"Content-Type": "application/json"}
    return b"".join([text, *raw]), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def infer_response(model: str, rid_text: str, value: int, batch_id: int) -> dict:
    """The JSON answer to a one-item request (what a load generator expects)."""
    return json.loads(infer_answer(model, InferCall(None, rid_text, [value]), batch_id)[0])


def error_body(status: str, reason: str) -> dict:
    return {"error": f"{status}: {reason}" if reason else status}


def model_metadata(name: str, tensor: bool = False) -> dict:
    return {"name": name, "versions": ["1"], "platform": "harness", "inputs": [IMAGE if tensor else INPUT],
            "outputs": OUTPUTS}


def model_config(name: str, max_batch_size: int, system: dict, tensor: bool = False) -> dict:
    """The model's configuration in Triton's JSON form, which its clients (perf_analyzer) read: the
    batch size, the tensors, and the system under test's batching settings under `parameters`."""
    tensor_in = IMAGE if tensor else INPUT
    return {
        "name": name, "platform": "harness", "backend": "harness", "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": max_batch_size,
        "input": [{"name": tensor_in["name"], "data_type": f"TYPE_{tensor_in['datatype']}", "format": "FORMAT_NONE",
                   "dims": tensor_in["shape"][1:]}],
        "output": [{"name": o["name"], "data_type": f"TYPE_{o['datatype']}", "dims": [1]} for o in OUTPUTS],
        "dynamic_batching": {},
        "instance_group": [{"name": name, "kind": "KIND_GPU", "count": 1}],
        "parameters": {key: {"string_value": str(value)} for key, value in system.items()},
    }


def outcome(code: int, body: dict | bytes | str | None) -> tuple[str, str, int]:
    """(status, reason, batch id or -1) of an infer answer, as the server recorded it."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    if code == 200:
        try:
            out = {o["name"]: o["data"] for o in body["outputs"]}
            return OK, "", int(out["batch_id"][0])
        except (TypeError, KeyError, IndexError, ValueError):
            return ERROR, "200 answer without a batch_id output", -1
    text = body.get("error", "") if isinstance(body, dict) else ""
    status, _, reason = str(text).partition(": ")
    if code in _STATUS_OF_CODE and status in HTTP_CODE and status != OK:
        return status, reason, -1
    return ERROR, f"http {code}: {text}" if text else f"http {code}", -1
