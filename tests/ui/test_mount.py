"""The Gradio mount shares the Litestar app with API routes without breaking either side."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import TestClient

from web.ui.mount import GRADIO_PATH_PREFIXES, GradioASGI, ui_route_handlers


@get("/api/items/{item_id:int}")
async def read_item(item_id: FromPath[int]) -> dict[str, int]:
    return {"item_id": item_id}


@get("/api/plain")
async def read_plain() -> dict[str, str]:
    return {"route": "plain"}


def _blocks() -> gr.Blocks:
    with gr.Blocks(title="mount test") as blocks:
        source = gr.Textbox(label="in")
        target = gr.Textbox(label="out")
        source.submit(lambda text: text[::-1], source, target)
    return blocks


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    app = Litestar([read_item, read_plain, *ui_route_handlers(GradioASGI(_blocks()))])
    with TestClient(app) as test_client:
        yield test_client


class TestGradioMount:
    def test_page_at_root_links_assets_that_resolve(self, client: TestClient[Litestar]) -> None:
        """`/` is Gradio's page and every script it links is served, not a Litestar 404."""
        page = client.get("/")
        assert page.status_code == 200
        assert "<html" in page.text.lower()
        scripts = [part.split('"')[0] for part in page.text.split('src="./')[1:]]
        assert scripts, "the page links no scripts"
        for script in scripts:
            asset = client.get(f"/{script}")
            assert asset.status_code == 200, script
            assert len(asset.content) > 0

    def test_api_routes_with_path_parameters_stay_with_litestar(
        self, client: TestClient[Litestar]
    ) -> None:
        """A mount at `/` would swallow parameterised routes; the prefix mount must not."""
        assert client.get("/api/items/7").json() == {"item_id": 7}
        assert client.get("/api/plain").json() == {"route": "plain"}
        assert client.get("/api/missing").status_code == 404

    def test_gradio_config_describes_the_blocks(self, client: TestClient[Litestar]) -> None:
        """The config route answers at its real path with this app's components."""
        config = client.get("/config")
        assert config.status_code == 200
        assert config.json()["title"] == "mount test"

    def test_every_prefix_is_absolute_and_distinct(self) -> None:
        """Prefixes must not shadow the service's own top-level routes."""
        assert all(prefix.startswith("/") for prefix in GRADIO_PATH_PREFIXES)
        assert len(set(GRADIO_PATH_PREFIXES)) == len(GRADIO_PATH_PREFIXES)
        for service_prefix in ("/api", "/v1", "/schema", "/health", "/ready", "/metrics"):
            assert not any(service_prefix.startswith(p) for p in GRADIO_PATH_PREFIXES)


class TestGradioRoutesRefused:
    def test_upload_and_unused_routes_are_404(self, client: TestClient[Litestar]) -> None:
        """Gradio's upload route and the routes the page never calls are refused by the
        mount before Gradio sees them; the page's own routes still answer."""
        upload = client.post(
            "/gradio_api/upload", files={"files": ("a.txt", b"x" * 1000, "text/plain")}
        )
        assert upload.status_code == 404
        for path in ("/gradio_api/info", "/gradio_api/startup-events", "/monitoring"):
            assert client.get(path).status_code == 404, path
        assert client.get("/config").status_code == 200

    def test_forwarded_host_is_not_the_root_url(self, client: TestClient[Litestar]) -> None:
        """X-Forwarded-Host and X-Gradio-Server never become the page's root URL."""
        config = client.get(
            "/config",
            headers={"X-Forwarded-Host": "evil.example", "X-Gradio-Server": "http://evil.example"},
        ).json()
        assert "evil.example" not in str(config.get("root"))


def test_public_url_is_the_root_url() -> None:
    """With a public URL configured, the page's root URL is exactly it."""
    gradio_app = GradioASGI(_blocks(), public_url="https://chat.example")
    app = Litestar([*ui_route_handlers(gradio_app)])
    with TestClient(app) as test_client:
        config = test_client.get("/config", headers={"X-Forwarded-Host": "evil.example"}).json()
    assert config["root"] == "https://chat.example"
