"""The KServe v2 / Triton HTTP inference protocol, as the live frontend speaks it (JSON tensors).

Every model takes one synthetic input and answers two outputs:

    POST /v2/models/{name}/infer
    {"id": "42", "inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1], "data": [0]}]}
    -> 200 {"model_name": name, "id": "42",
            "outputs": [{"name": "y", "datatype": "INT32", "shape": [1, 1], "data": [<x>]},
                        {"name": "batch_id", "datatype": "INT64", "shape": [1, 1], "data": [<batch>]}]}

A request the scheduler did not serve answers {"error": "<status>: <reason>"}
with the status's HTTP code (dropped 503, rejected 429, timeout 504,
error 500); a bad request answers 4xx {"error": "<what is wrong>"}.
`outcome()` turns any answer back into (status, reason, batch id), so a
client (the load generator) records exactly what the server decided.
"""

from __future__ import annotations

import json

from harness.core import DROPPED, ERROR, OK, REJECTED, TIMEOUT

INPUT = {"name": "x", "datatype": "INT32", "shape": [-1, 1]}
OUTPUTS = [{"name": "y", "datatype": "INT32", "shape": [-1, 1]},
           {"name": "batch_id", "datatype": "INT64", "shape": [-1, 1]}]
HTTP_CODE = {OK: 200, DROPPED: 503, REJECTED: 429, TIMEOUT: 504, ERROR: 500}
_STATUS_OF_CODE = {code: status for status, code in HTTP_CODE.items()}
INT32 = (-2**31, 2**31 - 1)
INT64 = (-2**63, 2**63 - 1)


class BadRequest(Exception):
    """The request is malformed; the message says what is wrong (answered with 400)."""


def infer_request(request_id: int | None = None, value: int = 0) -> dict:
    """The body of a valid infer request (the synthetic payload)."""
    body = {"inputs": [{"name": INPUT["name"], "datatype": INPUT["datatype"], "shape": [1, 1], "data": [value]}]}
    if request_id is not None:
        body["id"] = str(request_id)
    return body


def parse_infer_request(data: bytes) -> tuple[int | None, str | None, int]:
    """Validate an infer body; returns (request id or None, the id as sent, the input value)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    rid, rid_text = None, body.get("id")
    if rid_text is not None:
        if not isinstance(rid_text, str):
            raise BadRequest(f"'id' must be a string holding a decimal integer (got {rid_text!r})")
        try:
            rid = int(rid_text, 10)
        except ValueError:
            raise BadRequest(f"'id' must be a decimal integer (got {rid_text[:40]!r})") from None
        if not INT64[0] <= rid <= INT64[1]:
            raise BadRequest(f"'id' {rid_text[:40]} is outside the 64-bit integer range")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"'inputs' must be a list of one tensor, {INPUT['name']!r}")
    tensor = inputs[0]
    name = tensor.get("name")
    if name != INPUT["name"]:
        raise BadRequest(f"unknown input {name!r}; the model takes one input {INPUT['name']!r}")
    if "parameters" in tensor and isinstance(tensor["parameters"], dict) \
            and "binary_data_size" in tensor["parameters"]:
        raise BadRequest("binary tensor data is not supported; send the tensor as JSON 'data'")
    if tensor.get("datatype") != INPUT["datatype"]:
        raise BadRequest(f"input {name!r} must have datatype {INPUT['datatype']} (got {tensor.get('datatype')!r})")
    if tensor.get("shape") != [1, 1]:
        raise BadRequest(f"input {name!r} must have shape [1, 1], one request per call (got {tensor.get('shape')!r})")
    values = tensor.get("data")
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], list):
        values = values[0]                      # the nested form [[v]] is valid JSON tensor data too
    if not isinstance(values, list) or len(values) != 1:
        raise BadRequest(f"input {name!r} must hold exactly one value in 'data' (got {str(values)[:40]})")
    value = values[0]
    if isinstance(value, bool) or not isinstance(value, int) or not INT32[0] <= value <= INT32[1]:
        raise BadRequest(f"input {name!r} holds {value!r}, not an INT32")
    outputs = body.get("outputs")
    if outputs is not None:
        known = {o["name"] for o in OUTPUTS}
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and o.get("name") in known
                                                    for o in outputs):
            raise BadRequest(f"'outputs' may only request {sorted(known)}")
    return rid, rid_text, value


def infer_response(model: str, rid_text: str, value: int, batch_id: int) -> dict:
    return {"model_name": model, "id": rid_text,
            "outputs": [{"name": "y", "datatype": "INT32", "shape": [1, 1], "data": [value]},
                        {"name": "batch_id", "datatype": "INT64", "shape": [1, 1], "data": [batch_id]}]}


def error_body(status: str, reason: str) -> dict:
    return {"error": f"{status}: {reason}" if reason else status}


def model_metadata(name: str) -> dict:
    return {"name": name, "versions": ["1"], "platform": "harness", "inputs": [INPUT], "outputs": OUTPUTS}


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
