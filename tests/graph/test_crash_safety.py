"""A save killed half-way leaves the previous file intact and nothing partial
under the final name."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

CHILD = textwrap.dedent('''
    import sys
    import numpy as np
    import onnx
    from onnxpress.graph import load, save
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((1024, 1024)).astype(np.float32), f"w{i}") for i in range(48)]
    nodes, x = [], "x"
    for i in range(48):
        nodes.append(onnx.helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        x = f"m{i}"
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", 1, ["N", 1024])],
                                   [onnx.helper.make_tensor_value_info(x, 1, ["N", 1024])], inits)
    model = load(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    print("ready", flush=True)
    for _ in range(50):  # keep saving until killed
        save(model, sys.argv[1], external_data=sys.argv[2] == "1")
''')


def _kill_during_save(tmp_path, external: bool) -> None:
    out = tmp_path / "model.onnx"
    old = b"previous model bytes"
    out.write_bytes(old)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(out), "1" if external else "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".model.onnx.") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline, "the save never started"
            time.sleep(0.002)
        time.sleep(0.05)  # well inside writing ~200 MB
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    content = out.read_bytes()
    # Either the old file, untouched, or a complete model from an earlier finished save.
    if content != old:
        import onnx

        from onnxpress.graph import load_proto

        proto = load_proto(out)
        assert len(proto.graph.node) == 48
    names = os.listdir(tmp_path)
    assert all(n in ("model.onnx", "model.onnx.data") or n.startswith(".model.onnx.") for n in names), names


def test_kill_during_inline_save(tmp_path):
    _kill_during_save(tmp_path, external=False)


def test_kill_during_external_data_save(tmp_path):
    _kill_during_save(tmp_path, external=True)
