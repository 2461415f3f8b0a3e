"""The model every tritonserver instance runs: hands its batch to the harness, answers with the batch id.

This file runs inside tritonserver's Python backend stub (a process per
model instance), never in the harness: it is copied into each model's
directory of the run's model repository. On start it connects to the
harness's unix socket (the model config's `forward_socket` parameter, an
abstract-namespace name) and says which model it serves. Per batch Triton
hands it, it sends the batch's size (4 bytes) and reads back the batch id
(8 bytes, signed); a negative id is followed by an error message (4-byte
length, UTF-8), which every request of the batch is answered with. `y`
echoes each request's `x`, as the harness's own frontend answers.
"""

import json
import socket
import struct

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = json.loads(args["model_config"])["parameters"]["forward_socket"]["string_value"]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect("\0" + path)
        name = args["model_name"].encode()
        self.sock.sendall(struct.pack("!H", len(name)) + name)

    def _read(self, n):
        got = b""
        while len(got) < n:
            chunk = self.sock.recv(n - len(got))
            if not chunk:
                raise pb_utils.TritonModelException("the harness closed the forwarding socket")
            got += chunk
        return got

    def execute(self, requests):
        inputs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        self.sock.sendall(struct.pack("!I", sum(len(x) for x in inputs)))
        (batch_id,) = struct.unpack("!q", self._read(8))
        if batch_id < 0:
            (length,) = struct.unpack("!I", self._read(4))
            error = pb_utils.TritonError(self._read(length).decode(errors="replace"))
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", x.astype(np.int32)),
                                            pb_utils.Tensor("batch_id", np.full((len(x), 1), batch_id, np.int64))])
                for x in inputs]

    def finalize(self):
        self.sock.close()
