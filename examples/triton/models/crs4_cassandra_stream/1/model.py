"""Triton Python-backend model crs4_cassandra_stream:
crs4_cassandra.triton.backend.StreamModel.

Written by crs4_cassandra.triton.write_repository; settings are the parameters in
config.pbtxt (or $CRS4_TRITON_<NAME> where a parameter is left empty).
"""

import json
import os
import sys


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        path = params.get("python_path", {}).get("string_value", "")
        path = path or os.environ.get("CRS4_TRITON_PYTHON_PATH", "")
        if path:  # where crs4_cassandra is, when not in the backend's Python
            sys.path[:0] = [p for p in path.split(os.pathsep) if p]
        from crs4_cassandra.triton.backend import StreamModel

        self.impl = StreamModel()
        self.impl.initialize(args)

    def execute(self, requests):
        return self.impl.execute(requests)

    def finalize(self):
        self.impl.finalize()
