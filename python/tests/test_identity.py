"""Identity options other than the Workload API: spiffe-helper files."""

import pytest

from conftest import TD

pytestmark = pytest.mark.usefixtures("node_a")


async def test_svid_files_identity(slim, connect, pki, ns, tmp_path):
    # `slimctl dev-ca issue` writes the spiffe-helper layout SvidFiles reads.
    d = pki.issue(f"{TD}/agent/files-{ns}", tmp_path / "svid")
    app = await connect(f"t/{ns}/files", identity=slim.SvidFiles(str(d)))
    assert app.spiffe_id == f"{TD}/agent/files-{ns}"
    # A channel works with it too: MLS binds to the same SVID.
    ch = await app.create_channel(f"t/{ns}/files-chan", admission=[f"{TD}/**"])
    assert [m.spiffe_id for m in await ch.members()] == [f"{TD}/agent/files-{ns}"]
    await ch.close()


async def test_svid_files_missing_dir_is_an_identity_error(slim, ns, node_a, tmp_path):
    with pytest.raises(slim.IdentityError) as e:
        await slim.connect(node_a.url, f"t/{ns}/nofiles",
                           identity=slim.SvidFiles(str(tmp_path / "nowhere")), timeout=5)
    assert "nowhere" in str(e.value)
