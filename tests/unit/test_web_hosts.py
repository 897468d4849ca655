"""What a web page elsewhere cannot make the lab do: answer under another host name (DNS
rebinding), change anything from another origin, or load anything from a message's HTML."""

from __future__ import annotations

from pathlib import Path

from maillab_inspector.web.api_v1 import inert_html
from maillab_inspector.web.app import create_app
from tests.unit.test_web_api import Lab, TestClient


def test_only_the_known_host_names_are_answered_and_only_their_origins_may_delete(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    lab.numbered(1)
    app = create_app(lab.catalogue, lab.forward, None, hosts=("127.0.0.1", "localhost", "::1"))
    with TestClient(app, base_url="http://localhost:8025") as client:
        assert client.get("/api/v1/messages").json()["total"] == 1
        for host in ("rebind.attacker.example:8025", "127.0.0.1.attacker.example", ""):
            # /wait as well: its fast path (web/quick_wait.py) sits inside the Host check.
            for path in ("/api/v1/messages", "/api/v1/wait?query=message-id:1@x.test&timeout=0"):
                answer = client.get(path, headers={"Host": host})
                assert answer.status_code == 421, (host, path)
                assert "does not answer to the host" in answer.json()["error"]
        assert client.get("/api/v1/wait?query=message-id:1@x.test&timeout=0").json()["matched"] == 1
        refused = client.delete("/api/v1/messages", headers={"Origin": "http://attacker.example"})
        assert refused.status_code == 403
        assert client.get("/api/v1/messages").json()["total"] == 1, "nothing was deleted"
        assert client.get("/", headers={"Host": "[::1]:8025"}).status_code == 200
        assert client.get("/", headers={"Host": "192.168.176.1:32768"}).status_code == 200, "an address: no rebinding"
        allowed = client.delete("/api/v1/messages", headers={"Origin": "http://127.0.0.1:8025"})
        assert allowed.json() == {"deleted": 1}
    lab.catalogue.close()


def test_the_preview_neither_preconnects_nor_rebases_nor_refreshes() -> None:
    html = (
        '<LINK rel="preconnect" href="http://evil.test"><link\trel=dns-prefetch href=//evil.test>'
        '<base href="http://evil.test/"><meta http-equiv=refresh content="0;url=http://evil.test">'
        "<p>a <linkedin> tag and the word <baseline></p>"
    )
    inert = inert_html(html).lower()
    assert "<link" not in inert.replace("<linkedin>", "") and "<base " not in inert and "<meta" not in inert
    assert "<linkedin>" in inert and "<baseline>" in inert, "other tags that start alike are left alone"


def test_the_preview_opens_no_frame() -> None:
    """Chromium opens a connection to a frame's host before the preview's policy refuses the frame."""
    inert = inert_html('<iframe src="http://evil.test/"></iframe><FRAME src=//evil.test><iframes>').lower()
    assert "<iframe " not in inert and "<frame " not in inert and "<iframes>" in inert
