"""A bundle is used only when complete and intact: a manifest that says `partial` is refused, and every
file the manifest lists (each graph and the tokenizer asset) is hash-checked, not only one graph."""

import json
import shutil

import pytest
from export_fixtures import bundle

from trml_edge.errors import BundleError
from trml_edge.runtime.bundle import MANIFEST, load_bundle


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    copy = tmp_path_factory.mktemp("bundle") / "b"
    shutil.copytree(bundle("fp32"), copy)
    return copy


def _listed(root):
    m = json.loads((root / MANIFEST).read_text())
    return {**{g: e["file"] for g, e in m["graphs"].items()}, "tokenizer": m["tokenizer"]["file"]}


def test_every_listed_file_is_hash_checked(good):
    files = _listed(good)
    assert len(files) == 7 and files["tokenizer"].startswith("assets/")  # six graphs and the BPE vocabulary
    load_bundle(good)
    for what, rel in files.items():
        path = good / rel
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01  # one bit, in the middle of the file
        path.write_bytes(bytes(damaged))
        try:
            with pytest.raises(BundleError, match=f"{what} file {rel} has sha256"):
                load_bundle(good)
        finally:
            path.write_bytes(original)
    load_bundle(good)  # restored: accepted again


@pytest.mark.parametrize("state", ["partial", None, "failed"])
def test_a_manifest_that_is_not_complete_is_refused(good, tmp_path, state):
    copy = tmp_path / "b"
    shutil.copytree(good, copy)
    m = json.loads((copy / MANIFEST).read_text())
    assert m["state"] == "complete"
    if state is None:
        del m["state"]
    else:
        m["state"] = state
    (copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"incomplete \\(state {state!r}\\).*trml-edge export"):
        load_bundle(copy)
    assert load_bundle(copy, allow_partial=True).graphs  # only the exporter's own gate may read it
