"""``surgery.export_onnx`` fuses Keras's LayerNormalization chains (two
``GlobalAveragePool`` means and a dozen element-wise nodes, as tf2onnx converts Keras 3's
LayerNormalization) into one ``LayerNormalization`` node each (opset 17), with the same
outputs in ONNX Runtime; with a gain, an offset, both, or (not fused: the width is not in
the chain) neither, and in a keras-hub ViT (5 of them: 2 per block and the last). An export
at an opset below 17 keeps the chains. Cases in tests/keras3_onnx_graph_cases.py, in a
Keras 3 child process."""
import pytest
from keras3_child import run_case


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_case("tensorflow", "keras3_onnx_graph_cases.py",
                    tmp_path_factory.mktemp("onnx_graph"), timeout=600)


@pytest.mark.parametrize("case,fused", [("scale_center", 1), ("scale", 1), ("center", 1),
                                        ("neither", 0), ("vit", 5)])
def test_layer_norm_chains_become_one_node_with_the_same_outputs(report, case, fused):
    r = report[f"{case}/default"]
    assert r["layer_norms"] == fused, r
    assert r["pools"] == (2 if case == "neither" else 0), r  # the chains' means are gone
    assert r["opset"] == (17 if fused else 15), r
    assert r["error"] <= 1e-4, r


@pytest.mark.parametrize("case", ["scale_center", "vit"])
def test_an_export_below_opset_17_keeps_the_chains(report, case):
    r = report[f"{case}/15"]
    assert r["layer_norms"] == 0 and r["pools"] > 0 and r["opset"] == 15, r
    assert r["error"] <= 1e-4, r
