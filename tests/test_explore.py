"""The parameter explorer: its session (no web code), its page and JSON API, its command."""

import base64
import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from regzoo.checkpoint import load_model
from regzoo.cli import build_parser, main
from regzoo.explore.command import explore_command
from regzoo.explore.render import FOLDED, deformation_grid, plane, scale_to_uint8
from regzoo.explore.session import ExploreSession, RefineJob
from regzoo.refinement import RefineOptions

ROOT = Path(__file__).resolve().parents[1]


def pair(root, case="0003"):
    """Fixed image, moving image, fixed mask, moving mask of one phantom case."""
    return (
        root / "imagesTr" / f"PhantomCT_{case}_0000.nii.gz",
        root / "imagesTr" / f"PhantomCT_{case}_0001.nii.gz",
        root / "masksTr" / f"PhantomCT_{case}_0000.nii.gz",
        root / "masksTr" / f"PhantomCT_{case}_0001.nii.gz",
    )


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint)


@pytest.fixture
def session(model, tiny_phantom, tiny_checkpoint, tmp_path):
    fixed, moving, fixed_seg, moving_seg = pair(tiny_phantom)
    return ExploreSession(
        model,
        fixed,
        moving,
        fixed_seg=fixed_seg,
        moving_seg=moving_seg,
        out=tmp_path / "saved",
        checkpoint=tiny_checkpoint,
    )


# -- render -----------------------------------------------------------------------------------
def test_plane_shows_the_second_axis_upwards():
    volume = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    cut = plane(volume, 0, 1)  # the (Y, Z) plane at x = 1
    assert cut.shape == (4, 3)  # rows along z, columns along y
    assert cut[-1, 0] == volume[1, 0, 0]  # bottom-left: y = 0, z = 0
    assert cut[0, 2] == volume[1, 2, 3]  # top-right: y = 2, z = 3


def test_deformation_grid_of_a_translation_moves_every_node():
    u = torch.zeros(3, 8, 8, 8)
    u[1] = 0.5  # along y: the columns of an axis-0 plane
    u[2] = 1.0  # along z: up on screen
    nodes = deformation_grid(u.numpy(), axis=0, index=4, step=4)
    assert (nodes["columns"], nodes["rows"]) == (2, 2)
    assert nodes["x"] == [0.5, 4.5, 0.5, 4.5]
    assert nodes["y"] == [2.0, 2.0, 6.0, 6.0]  # top row first: z = 4 at row 7 - 4 - 1


def test_jacobian_bytes_keep_folding_apart():
    det = torch.tensor([-0.5, 0.0, 1e-6, 1.0, 2.0, 3.0])
    assert scale_to_uint8(det.numpy(), 0.0, 2.0, reserve_folded=True).tolist() == [
        FOLDED,
        FOLDED,
        1,
        128,
        255,
        255,
    ]


# -- session ----------------------------------------------------------------------------------
def test_session_reregisters_only_when_the_parameters_change(session):
    first = session.view()
    assert session.update({"mu": 0.02, "lam": 0.02})
    assert not session.update({"linear_elastic.mu": 0.02, "linear_elastic.lam": 0.02})
    second = session.view([0, 100, -3])
    assert second["params"] == {"linear_elastic.lam": 0.02, "linear_elastic.mu": 0.02}
    assert second["readout"]["sdlogj"] != first["readout"]["sdlogj"]
    assert second["slices"] == [0, 31, 0]  # clipped into the volume
    readout = second["readout"]
    assert 0.0 <= readout["dice"] <= 1.0
    assert set(readout["energies"]) == {"linear_elastic"}
    for entry in second["planes"]:
        for name in ("fixed", "warped", "difference", "jacobian", "fixed_seg", "warped_seg"):
            image = entry[name]
            assert (image["width"], image["height"]) == (32, 32)
            assert len(base64.b64decode(image["data"])) == 32 * 32
        assert len(entry["grid"]["x"]) == entry["grid"]["rows"] * entry["grid"]["columns"]
    with pytest.raises(ValueError, match="out of range"):
        session.update({"mu": 1e4})
    with pytest.raises(KeyError, match="unknown free parameter 'nu'"):
        session.update({"nu": 1.0})


def test_session_rejects_images_of_another_shape(model, tiny_phantom):
    fixed, *_ = pair(tiny_phantom)
    with pytest.raises(ValueError, match=r"different grids: .* vs moving image: 32x32x16"):
        ExploreSession(model, fixed, torch.zeros(32, 32, 16))


def test_saved_refined_result_is_what_register_writes(session, tiny_phantom, tmp_path, capsys):
    session.update({"mu": 0.2, "lam": 0.4})
    job = RefineJob(session, 3)
    job.wait(120)
    assert job.status() == {
        "running": False,
        "fraction": 1.0,
        "steps": 3,
        "error": None,
        "cancelled": False,
    }
    assert session.refined == 3
    written = session.save()
    command = session.register_command().split()
    assert command[:2] == ["regzoo", "register"]
    assert command[command.index("--refine") + 1] == "3"
    again = tmp_path / "again"
    command[command.index("--out") + 1] = str(again)
    assert main(command[1:]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in written) == sorted(
        p.name for p in again.iterdir() if not p.name.startswith(".")
    )
    for path in written:
        ours, theirs = nib.load(path).get_fdata(), nib.load(again / path.name).get_fdata()
        assert np.allclose(ours, theirs, atol=1e-4), path.name
    assert not list(Path(written[0]).parent.glob(".*partial*"))


# -- HTTP -------------------------------------------------------------------------------------
class _RangeInputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.params: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "input" and attributes.get("type") == "range" and attributes["class"] == "param":
            self.params.append(attributes["data-name"])


@pytest.fixture
def client(session):
    pytest.importorskip("starlette", reason="the explorer's web parts need regzoo[explore]")
    from starlette.testclient import TestClient

    from regzoo.explore.app import create_app

    app = create_app(session, refine_steps=3)
    return TestClient(
        app, base_url="http://127.0.0.1:8765", headers={"X-Regzoo-Token": app.state.token}
    )


def test_page_has_one_slider_per_free_parameter(client, session):
    response = client.get("/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    parser = _RangeInputs()
    parser.feed(response.text)
    assert parser.params == session.model.objective.space.names
    assert 'data-scale="log"' in response.text
    assert "http" not in response.text  # nothing loads from elsewhere
    assert 'src="/static/explore.js"' in response.text
    script = client.get("/static/explore.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert client.get("/static/explore.css").status_code == 200
    for path in (
        "/static/index.html",
        "/static/../app.py",
        "/../pyproject.toml",
        "/regzoo/cli.py",
        "/api/nothing",
        "/explore.js",
    ):
        assert client.get(path).status_code == 404, path


def test_api_updates_refines_and_saves(client, session):
    state = client.get("/api/state").json()
    assert [p["short"] for p in state["parameters"]] == ["lam", "mu"]
    assert state["shape"] == [32, 32, 32] and state["save"]
    first = client.post("/api/update", json={"slices": [16, 16, 16]}).json()
    moved = client.post("/api/update", json={"params": {"mu": 50.0}, "slices": [1, 2, 3]})
    assert moved.status_code == 200
    assert moved.json()["readout"]["sdlogj"] != first["readout"]["sdlogj"]
    assert [p["index"] for p in moved.json()["planes"]] == [1, 2, 3]

    started = client.post("/api/refine", json={"params": {"mu": 50.0}, "steps": 3})
    assert started.status_code == 202
    deadline = time.monotonic() + 120
    while client.get("/api/refine").json()["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    refined = client.post("/api/update", json={"params": {"mu": 50.0}}).json()
    assert refined["refined"] == 3
    saved = client.post("/api/save", json={"params": {"mu": 50.0}}).json()
    assert {Path(p).name for p in saved["written"]} >= {"disp.nii.gz", "warped.nii.gz"}
    assert "--refine 3" in saved["command"] and "linear_elastic.mu=50" in saved["command"]


def test_api_refuses_bad_requests(client):
    def error(response, status):
        assert response.status_code == status
        return response.json()["error"]

    json_type = {"content-type": "application/json"}

    assert "out of range" in error(client.post("/api/update", json={"params": {"mu": 1e9}}), 400)
    assert "unknown free parameter" in error(
        client.post("/api/update", json={"params": {"nu": 1}}), 400
    )
    assert "params.mu: Input should be a valid number" in error(
        client.post("/api/update", json={"params": {"mu": "0.1"}}), 400
    )
    assert "slices" in error(client.post("/api/update", json={"slices": [1, 2]}), 400)
    assert "slices" in error(client.post("/api/update", json={"slices": [1, 2, 3.5]}), 400)
    huge = b'{"params": {"mu": 1' + b"0" * 400 + b"}}"
    assert "params.mu: Input should be a finite number" in error(
        client.post("/api/update", content=huge, headers=json_type), 400
    )
    assert "invalid request: body: Invalid JSON" in error(
        client.post("/api/update", content=b"{", headers=json_type), 400
    )
    assert "steps: Input should be greater than or equal to 1" in error(
        client.post("/api/refine", json={"steps": 0}), 400
    )
    assert "parms: Extra inputs are not permitted" in error(
        client.post("/api/save", json={"parms": {}}), 400
    )
    assert "too large" in error(
        client.post("/api/update", content=b" " * 70_000, headers=json_type), 413
    )
    assert client.get("/api/update").status_code == 405
    assert client.get("/", headers={"host": "attacker.example"}).status_code == 400
    # a second request while refining is refused, not queued behind the refinement
    assert client.post("/api/refine", json={"steps": 100}).status_code == 202
    assert "refinement is running" in error(client.post("/api/update", json={}), 409)
    assert "refinement is running" in error(client.post("/api/save", json={}), 409)
    while client.get("/api/refine").json()["running"]:
        time.sleep(0.1)


# -- command ----------------------------------------------------------------------------------
def test_explore_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explore", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--fixed", "--moving", "--fixed-seg", "--moving-seg", "--port"):
        assert option in text


def test_explore_command_parses_as_written(tiny_phantom):
    fixed, moving, _, moving_seg = pair(tiny_phantom)
    line = explore_command(
        "run dir/last.ckpt", fixed, moving, moving_seg=moving_seg, params={"linear_elastic.mu": 0.3}
    )
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert (args.command, args.model, args.moving_seg) == (
        "explore",
        "run dir/last.ckpt",
        str(moving_seg),
    )
    assert args.fixed_seg is None and args.param == ["linear_elastic.mu=0.3"]


def test_explore_without_the_extra_says_how_to_install_it(
    tiny_checkpoint, tiny_phantom, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "starlette", None)
    fixed, moving, *_ = pair(tiny_phantom)
    args = ["explore", "--model", str(tiny_checkpoint), "--fixed", str(fixed)]
    assert main([*args, "--moving", str(moving)]) == 2
    assert "pip install 'regzoo[explore]'" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_explore_serves_the_page_on_the_given_port(tiny_checkpoint, tiny_phantom, tmp_path):
    pytest.importorskip("uvicorn", reason="the explorer's web parts need regzoo[explore]")
    fixed, moving, *_ = pair(tiny_phantom)
    port = _free_port()
    command = [sys.executable, "-m", "regzoo", "explore", "--model", str(tiny_checkpoint)]
    command += ["--fixed", str(fixed), "--moving", str(moving), "--port", str(port)]
    command += ["--out", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line + process.stderr.read()
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.1)
        assert page.count('type="range" class="param"') == 2
        state_url = f"http://127.0.0.1:{port}/api/state"
        with urllib.request.urlopen(state_url, timeout=5) as response:
            assert json.load(response)["shape"] == [32, 32, 32]
    finally:
        process.terminate()
        process.wait(30)


def test_session_refuses_2d_images_with_a_message(model):
    with pytest.raises(ValueError, match="three orthogonal planes of 3D images"):
        ExploreSession(model, torch.zeros(32, 32), torch.zeros(32, 32))


# -- a web page on the same machine cannot drive the API ---------------------------------------
STATE_CHANGING = ("/api/update", "/api/refine", "/api/refine/cancel", "/api/save")


def test_cross_site_requests_to_every_state_changing_endpoint_are_refused(client, session):
    token = client.headers["X-Regzoo-Token"]
    foreign = "http://attacker.example"
    body = json.dumps({"params": {"mu": 0.5}, "steps": 10_000})
    for path in STATE_CHANGING:
        # what any page can send without a preflight: text/plain, its own Origin, no token
        simple = client.post(
            path,
            content=body,
            headers={"content-type": "text/plain", "origin": foreign, "X-Regzoo-Token": ""},
        )
        assert simple.status_code == 403, (path, simple.text)
        # even with the token (it cannot read it) a foreign Origin is refused
        with_token = client.post(path, content=body, headers={"origin": foreign,
                                 "content-type": "application/json"})  # fmt: skip
        assert with_token.status_code == 403 and "cross-site" in with_token.json()["error"]
        no_token = client.post(path, content=body, headers={
            "content-type": "application/json", "X-Regzoo-Token": "guess"})  # fmt: skip
        assert no_token.status_code == 403 and "X-Regzoo-Token" in no_token.json()["error"]
        plain = client.post(path, content=body, headers={"content-type": "text/plain"})
        assert plain.status_code == 415, path
        form = client.post(path, data={"params": "x"})
        assert form.status_code == 415, path
    assert not session.out.exists()  # nothing was saved
    assert client.get("/api/refine").json()["running"] is False  # nothing was started
    assert session.refined == 0
    # the page served here carries the token its script sends
    assert f'content="{token}"' in client.get("/").text
    same_origin = {"origin": "http://127.0.0.1:8765"}
    assert client.post("/api/update", json={}, headers=same_origin).status_code == 200


def test_ipv6_loopback_keeps_the_host_guard(session):
    from starlette.testclient import TestClient

    from regzoo.explore.app import create_app
    from regzoo.explore.command import allowed_hosts

    assert allowed_hosts("::1") == allowed_hosts("127.0.0.1") != ["*"]
    assert "*" not in allowed_hosts("[::1]") and "*" not in allowed_hosts("0.0.0.0")
    client = TestClient(create_app(session, allowed_hosts=allowed_hosts("::1")),
                        base_url="http://[::1]:8765")  # fmt: skip
    assert client.get("/").status_code == 200
    assert client.get("/api/state").status_code == 200
    for host in ("attacker.example", "attacker.example:8765", "[::2]:8765"):
        assert client.get("/", headers={"host": host}).status_code == 400, host
        assert client.get("/api/state", headers={"host": host}).status_code == 400, host


def _asgi_post(app, headers, chunks):
    """POST to an ASGI app, feeding ``chunks``; returns (status, chunks the app pulled)."""
    import asyncio

    pulled = 0
    status = {}

    async def receive():
        nonlocal pulled
        if pulled >= len(chunks):
            return {"type": "http.disconnect"}
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1],
                "more_body": pulled < len(chunks)}  # fmt: skip

    async def send(message):
        if message["type"] == "http.response.start":
            status["code"] = message["status"]

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/api/update", "raw_path": b"/api/update", "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 8765), "client": ("127.0.0.1", 5000),
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return status["code"], pulled


def test_body_size_limit_is_enforced_before_reading(session):
    from regzoo.explore.app import create_app

    app = create_app(session, token="t0ken")
    headers = {"host": "127.0.0.1:8765", "content-type": "application/json",
               "x-regzoo-token": "t0ken"}  # fmt: skip
    chunks = [b" " * 2**20] * 400  # 400 MB
    assert _asgi_post(app, {**headers, "content-length": str(400 * 2**20)}, chunks) == (413, 0)
    code, pulled = _asgi_post(app, headers, chunks)  # no length announced: stop at the limit
    assert code == 413 and pulled == 1
    assert _asgi_post(app, headers, [b"{", b"}"]) == (200, 2)


def test_deeply_nested_json_is_a_400(client):
    nested = b"[" * 100_000 + b"]" * 100_000
    for body in (nested[:60_000], b'{"params": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"):
        response = client.post("/api/update", content=body,
                               headers={"content-type": "application/json"})  # fmt: skip
        assert response.status_code in (400, 413), response.text
        assert "error" in response.json()
    deep = b"[" * 20_000 + b"]" * 20_000
    response = client.post("/api/update", content=deep,
                           headers={"content-type": "application/json"})  # fmt: skip
    assert response.status_code == 400 and "recursion limit" in response.json()["error"]


def test_a_refinement_can_be_cancelled(client, session):
    started = client.post("/api/refine", json={"steps": 10_000})
    assert started.status_code == 202
    assert client.post("/api/update", json={}).status_code == 409
    cancelled = client.post("/api/refine/cancel", json={})
    assert cancelled.status_code == 200
    assert cancelled.json()["running"] is False and cancelled.json()["cancelled"] is True
    assert client.get("/api/refine").json()["cancelled"] is True
    view = client.post("/api/update", json={})
    assert view.status_code == 200 and view.json()["refined"] == 0  # the network's field


def test_save_folder_of_user_files_is_refused_at_start_up(model, tiny_phantom, tmp_path):
    fixed, moving, *_ = pair(tiny_phantom)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a regzoo output folder"):
        ExploreSession(model, fixed, moving, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_segmentation_on_another_grid_is_refused(model, tiny_phantom, tmp_path):
    fixed, moving, _, moving_seg = pair(tiny_phantom)
    image = nib.load(moving_seg)
    shifted = image.affine.copy()
    shifted[:3, 3] += 40.0
    other = tmp_path / "seg_elsewhere.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), other)
    with pytest.raises(ValueError, match="images on different grids"):
        ExploreSession(model, fixed, moving, moving_seg=other)


# -- the readout is the model's own objective ------------------------------------------------
SMALL_NET = {"enc": [4, 8], "dec": [8, 8, 4], "hyper_units": [8]}


def _model(regularizers, **extra):
    from regzoo.config import load_config
    from regzoo.lightning_module import HyperRegistration

    config = {"model": SMALL_NET, "regularizers": regularizers, **extra}
    return HyperRegistration(load_config(config)).eval()


def _at_spacing(source, target, spacing):
    image = nib.load(source)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), target)
    return target


def test_the_readout_is_the_objective_register_reports_at_21_mm(tiny_phantom, tmp_path):
    from regzoo.inference import register

    model = _model([{"name": "curvature", "alpha": {"low": 0.1, "high": 10.0, "scale": "log"}}])
    fixed_path, moving_path, _, _ = pair(tiny_phantom)
    fixed = _at_spacing(fixed_path, tmp_path / "fixed.nii.gz", 21.0)
    moving = _at_spacing(moving_path, tmp_path / "moving.nii.gz", 21.0)
    readout = ExploreSession(model, fixed, moving).view()["readout"]
    reported = register(model, fixed, moving).objective  # `regzoo register --refine 0`
    assert reported is not None
    assert readout["objective"] == pytest.approx(reported["objective"], rel=1e-6)
    assert readout["similarity"] == pytest.approx(reported["similarity"], rel=1e-6)
    assert readout["energies"] == pytest.approx(reported["energies"], rel=1e-6)
    # per mm: a second-order energy at 21 mm voxels is the per-voxel one / 21^2 (the readout
    # used to be the per-voxel energy, 441 times the objective that refinement minimises)
    per_voxel_objective = register(model, fixed_path, moving_path).objective
    assert per_voxel_objective is not None
    per_voxel = per_voxel_objective["energies"]["curvature"]
    assert readout["energies"]["curvature"] == pytest.approx(per_voxel / 21.0**2, rel=1e-5)


def test_a_per_label_model_opens_with_the_fixed_label_map(tiny_phantom, tmp_path):
    from regzoo._errors import InputError
    from regzoo.inference import register

    per_label = {"per_label": {"lung": {"low": 2.0, "high": 50.0, "scale": "log"}}}
    model = _model(
        [{"name": "linear_elastic", "params": {"mu": per_label}}],
        data={"labels": {"lung": 1}},
    )
    fixed, moving, _, _ = pair(tiny_phantom)
    labels = tiny_phantom / "labelsTr" / fixed.name
    with pytest.raises(InputError, match="--fixed-labels"):
        ExploreSession(model, fixed, moving)
    session = ExploreSession(model, fixed, moving, fixed_labels=labels, out=tmp_path / "out")
    view = session.view()
    assert set(view["maps"]) == {"linear_elastic.mu"}
    low, high = view["maps"]["linear_elastic.mu"]
    assert low < high  # the lung's value and the background's
    assert all("map:linear_elastic.mu" in plane for plane in view["planes"])
    reported = register(model, fixed, moving, fixed_labels=labels).objective
    assert reported is not None
    assert view["readout"]["objective"] == pytest.approx(reported["objective"], rel=1e-6)
    assert "map_linear_elastic.mu.nii.gz" in [p.name for p in session.save()]
    assert "--fixed-labels" in session.register_command()
    args = build_parser().parse_args(
        ["explore", "--model", "m.ckpt", "--fixed", "f", "--moving", "m", "--fixed-labels", "l"]
    )
    assert args.fixed_labels == "l"


def test_a_bug_inside_the_api_is_not_answered_as_a_user_error(session, monkeypatch):
    pytest.importorskip("starlette", reason="the explorer's web parts need regzoo[explore]")
    from starlette.testclient import TestClient

    from regzoo.explore.app import create_app

    def broken(params):
        raise KeyError("an internal lookup failed")

    monkeypatch.setattr(session, "update", broken)
    app = create_app(session)
    token = {"X-Regzoo-Token": app.state.token}
    url = "http://127.0.0.1:8765"
    client = TestClient(app, base_url=url, headers=token, raise_server_exceptions=False)
    assert client.post("/api/update", json={"params": {"mu": 1.0}}).status_code == 500
    with pytest.raises(KeyError, match="internal lookup"):
        TestClient(app, base_url=url, headers=token).post(
            "/api/update", json={"params": {"mu": 1.0}}
        )


def test_the_refine_button_takes_the_refine_options(model, tiny_phantom, tiny_checkpoint, tmp_path):
    fixed, moving, _, _ = pair(tiny_phantom)
    options = RefineOptions(similarity="model + ngf", split="1:1:2")
    plain = ExploreSession(model, fixed, moving, checkpoint=tiny_checkpoint)
    combined = ExploreSession(model, fixed, moving, checkpoint=tiny_checkpoint, refine=options)
    with pytest.warns(DeprecationWarning, match="as a mapping is deprecated"):
        former = ExploreSession(
            model, fixed, moving, refine_options={"similarity": "model + ngf", "split": [1, 1, 2]}
        )
    assert former.refine_settings == combined.refine_settings == options
    for explored in (plain, combined):
        explored.update({"mu": 0.2, "lam": 0.4})
        explored.refine(4)
    command = combined.register_command()
    assert "--refine-similarity 'model + ngf' --refine-split 1:1:2" in command
    assert "--refine-similarity" not in plain.register_command()
    # another objective was minimised: another field
    first, second = (s._current.result.displacement for s in (plain, combined))
    assert not torch.allclose(first, second)
