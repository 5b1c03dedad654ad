"""deploy/ against the code: every flag a manifest or unit passes exists in
the real parser of its program (and the whole command line parses), ports
match the flags, the user matches the image's, written volumes get the
user's group, the image is named in one place (kustomize), probes use a
command that speaks TLS (and answers a real TLS+mTLS control plane), and the
image's user can start the servers, and serve a model, on data dirs owned
the way the manifests leave them (a root-owned one reproduces the crash),
and the gateway Deployment's command line serves a fleet with probes that
hold through a control-plane outage."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from certs import make_pki
from cluster import ROOT, Cluster, Proc, authed_channel, wait_until, worker_processes
from modelbuild import onnx_add

import control_plane.gateway.main as gw_main
import control_plane.main as cp_main
import node_agent.main as agent_main
from modelfleet.cli import main as cli_main
from modelfleet.inference import grpc_service_pb2 as pb
from modelfleet.inference import grpc_service_pb2_grpc as pb_grpc
from modelfleet.v1 import deployments_pb2 as dpb

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = (DEPLOY / "container" / "Dockerfile").read_text()
PARSERS = {
    "modelfleet-control-plane": cp_main.build_parser, "modelfleet-agent": agent_main.build_parser,
    "modelfleet-gateway": gw_main.build_parser,
}  # fmt: skip


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]) for d in manifests() if d["kind"] in ("StatefulSet", "DaemonSet", "Deployment")]


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, pod, c) for name, pod in pod_specs() for c in pod["spec"]["containers"]]


def image_entrypoint() -> str:
    return str(yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.M).group(1))[0])  # type: ignore[union-attr]


def substituted(args: list[str]) -> list[str]:
    """Kubernetes' $(VAR) references with a plausible value (the parser checks types)."""
    return [re.sub(r"\$\((\w+)\)", lambda m: "10.0.0.7" if m.group(1).endswith("IP") else "default", a) for a in args]


def flag_value(args: list[str], flag: str) -> str:
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag:
            return args[i + 1]
    raise AssertionError(f"{flag} not in {args}")


def test_every_container_command_line_parses_with_its_programs_real_flags() -> None:
    seen = set()
    for name, _, c in containers():
        program = (c.get("command") or [image_entrypoint()])[0]
        assert program in PARSERS, f"{name}/{c['name']}: unknown program {program}"
        args = substituted(c.get("args", []))
        unknown = _not_spelled_out(PARSERS[program](), args)
        assert not unknown, f"{name}/{c['name']}: {program} has no {unknown}"
        if program == "modelfleet-control-plane":
            cp_main.parse_args(args)  # the real validation too (auth on beyond loopback, ...)
        elif program == "modelfleet-gateway":
            gw_main.parse_args(args)  # --listen, --processes, TLS pairs
        else:
            PARSERS[program]().parse_args(args)
        seen.add(program)
    assert seen == set(PARSERS)


def _not_spelled_out(parser: Any, args: list[str]) -> list[str]:
    """Flags the parser does not have under exactly that name (argparse itself takes abbreviations)."""
    return [f for f in (a.split("=", 1)[0] for a in args if a.startswith("--")) if f not in parser._option_string_actions]


def test_the_env_file_offers_only_flags_its_program_has() -> None:
    """The flags modelfleet.env's comments list for each unit (its `modelfleet ...` CLI lines aside)."""
    text = (DEPLOY / "systemd" / "modelfleet.env").read_text()
    sections = dict(re.findall(r"^# --- (control plane|node agent|gateway) \(.*?\) ---\n(.*?)(?=^# ---|\Z)", text, re.M | re.S))
    units = {"control plane": "modelfleet-control-plane", "node agent": "modelfleet-agent", "gateway": "modelfleet-gateway"}
    assert set(sections) == set(units)
    for title, program in units.items():
        offered = "\n".join(line for line in sections[title].splitlines() if "modelfleet " not in line)
        flags = sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", offered)))
        assert flags and not _not_spelled_out(PARSERS[program](), flags), f"modelfleet.env, {title}"


def test_ports_metrics_and_annotations_match_the_flags() -> None:
    for name, pod, c in containers():
        args = c.get("args", [])
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if any(a.startswith("--listen") for a in args):
            assert ports["grpc"] == int(flag_value(args, "--listen").rsplit(":", 1)[1]), name
        assert ports["metrics"] == int(flag_value(args, "--metrics-port")), name
        assert flag_value(args, "--metrics-host") == "0.0.0.0", f"{name}: /metrics must be reachable from the scraper"
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == ports["metrics"], name
        assert str(ports["metrics"]) in re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.M).group(1).split()  # type: ignore[union-attr]
    services = [d for d in manifests() if d["kind"] == "Service"]
    named = {p["name"] for _, _, c in containers() for p in c.get("ports", [])}
    for svc in services:
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in named, f"service {svc['metadata']['name']} targets a port no container declares"


def test_probes_run_a_command_that_can_speak_tls() -> None:
    for name, _, c in containers():
        for probe in ("readinessProbe", "livenessProbe"):
            spec = c[probe]
            assert "grpc" not in spec, f"{name}: a grpc: probe cannot use TLS"
            if "exec" in spec:
                command = spec["exec"]["command"]
                assert command[:2] == ["modelfleet", "health"], name
                parsed = cli_main.build_parser().parse_args(command[1:] + ["--tls-ca", "/ca.pem"])  # TLS flags exist
                assert parsed.func.__name__ == "health"
                assert flag_value(command, "--addr").rsplit(":", 1)[1] == flag_value(c["args"], "--listen").rsplit(":", 1)[1]
            else:
                port = spec["tcpSocket"]["port"]
                assert port in {p["name"] for p in c["ports"]}, name


def test_pods_run_as_the_images_user_and_can_write_their_volumes() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE, re.M)
    assert user, "the Dockerfile names its user numerically (uid:gid)"
    uid, gid = int(user.group(1)), int(user.group(2))
    for name, pod in pod_specs():
        ctx = pod["spec"]["securityContext"]
        assert (ctx["runAsUser"], ctx["runAsGroup"], ctx["runAsNonRoot"]) == (uid, gid, True), name
        assert ctx["fsGroup"] == gid, f"{name}: volumes must be writable by gid {gid}"
        host_paths = [v for v in pod["spec"].get("volumes", []) if "hostPath" in v]
        if host_paths:  # fsGroup does not apply to hostPath: an init container hands it over
            [init] = pod["spec"]["initContainers"]
            assert f"chown {uid}:{gid}" in " ".join(init["command"]) and init["securityContext"]["runAsUser"] == 0
            mounted = {m["name"] for m in init["volumeMounts"]}
            assert {v["name"] for v in host_paths} <= mounted, name


def test_the_image_is_named_in_one_place_with_a_registry() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    assert image["name"] == "modelfleet" and "/" in image["newName"] and image["newTag"]
    assert set(kustomization["resources"]) == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    for name, pod in pod_specs():
        for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            assert c["image"] == "modelfleet", f"{name}/{c['name']}: name the image only through kustomization.yaml"
    kubectl = shutil.which("kubectl")
    if kubectl:  # renders as a cluster would receive it
        rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        images = set(re.findall(r"image: (\S+)", rendered.stdout))
        assert images == {f"{image['newName']}:{image['newTag']}"}


def systemd_exec(unit: Path) -> tuple[str, list[str]]:
    text = unit.read_text().replace("\\\n", " ")
    line = re.search(r"^ExecStart=(.+)$", text, re.M).group(1)  # type: ignore[union-attr]
    words = shlex.split(line)
    return Path(words[0]).name, words[1:]


def test_systemd_units_pass_only_flags_that_exist() -> None:
    env = dict(
        line.split("=", 1) for line in (DEPLOY / "systemd" / "modelfleet.env").read_text().splitlines()
        if line and not line.startswith("#") and "=" in line
    )  # fmt: skip
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        program, words = systemd_exec(unit)
        parser = PARSERS[program]()
        expanded: list[str] = []
        for word in words:
            if re.fullmatch(r"\$\w+", word):  # $VAR alone: split at whitespace
                expanded += env.get(word[1:], "").split()
            else:
                expanded.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), "x"), word))
        flags = [w.split("=", 1)[0] for w in expanded if w.startswith("--")]
        unknown = [f for f in flags if f not in parser._option_string_actions]
        assert not unknown, f"{unit.name}: {unknown}"



def _doc_commands(section: str) -> list[list[str]]:
    """The command lines of a deploy/README.md section (code blocks, and inline `modelfleet...` spans
    without an ellipsis), comments and line continuations dropped."""
    text = re.search(rf"^## {section}\n(.*?)(?=^## )", (DEPLOY / "README.md").read_text(), re.M | re.S).group(1)  # type: ignore[union-attr]
    lines = [line.split("  #")[0] for block in re.findall(r"```sh\n(.*?)```", text, re.S) for line in block.replace("\\\n", " ").splitlines()]
    lines += [span for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S).replace("\n", " "))
              if re.match(r"modelfleet(-\w+)? \S", span) and "..." not in span]  # fmt: skip
    return [shlex.split(line) for line in lines if line.strip()]


def test_the_gateways_section_commands_parse_with_the_real_programs() -> None:
    commands = _doc_commands("Gateways")
    ran = set()
    for words in commands:
        if words[0] == "modelfleet":
            args = cli_main.build_parser().parse_args(words[1:])
            assert callable(args.func), words
        elif words[0] == "modelfleet-gateway":
            unknown = _not_spelled_out(gw_main.build_parser(), words[1:])
            assert not unknown, unknown
            gw_main.build_parser().parse_args(words[1:])
        elif words[0] in ("install", "systemctl", "kubectl"):
            continue
        else:
            raise AssertionError(f"deploy/README.md, Gateways: an unchecked command {words}")
        ran.add(" ".join(words[:3]))
    assert {"modelfleet keys create", "modelfleet health --addr", "modelfleet gateways list"} <= ran, ran
    assert any(r.startswith("modelfleet-gateway") for r in ran) and any(r.startswith("modelfleet infer") for r in ran)

def _as_image_user() -> list[str]:
    return ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", "--"]


def _can_run_as_image_user() -> str:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return "needs root and setpriv"
    probe = subprocess.run([*_as_image_user(), sys.executable, "-c", "import control_plane.main, node_agent.main"],
                           capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    return "" if probe.returncode == 0 else f"uid 10001 cannot read this checkout or its venv: {probe.stderr[-300:]}"


def test_the_images_user_starts_both_servers_on_a_directory_owned_as_the_manifests_leave_it() -> None:
    why = _can_run_as_image_user()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="mf-uid-"))
    os.chmod(base, 0o755)
    data = base / "var-lib-modelfleet"
    data.mkdir()
    os.chown(data, 10001, 10001)  # what fsGroup / the init container's chown leave
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cp = subprocess.Popen([*_as_image_user(), sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0",
                               "--data-dir", str(data / "control-plane"), "--auth", "off"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        procs.append(cp)
        endpoint = data / "control-plane" / "endpoint"
        addr = wait_until(lambda: endpoint.exists() and endpoint.read_text().strip(), timeout=30, what="the endpoint as uid 10001")
        agent = subprocess.Popen([*_as_image_user(), sys.executable, "-m", "node_agent.main", "--control-plane", addr,
                                  "--data-dir", str(data / "agent"), "--cpus", "1"], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        procs.append(agent)
        node_id = data / "agent" / "node_id"
        wait_until(lambda: node_id.exists() or agent.poll() is not None, timeout=30, what="the agent's node id as uid 10001")
        assert agent.poll() is None and cp.poll() is None
        assert (data / "control-plane").stat().st_uid == 10001 and node_id.stat().st_uid == 10001
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _health(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    return subprocess.run([sys.executable, "-m", "modelfleet.cli", "health", *args], capture_output=True, text=True,
                          timeout=60, env=env, stdin=subprocess.DEVNULL)  # fmt: skip


def test_the_probe_command_answers_a_tls_control_plane_as_the_manifests_comment_says(tmp_path: Path) -> None:
    """What the probes run once TLS is on (the `grpc:` probe, plaintext, is refused at the handshake)."""
    pki = make_pki(tmp_path / "pki")
    data = tmp_path / "cp"
    with (tmp_path / "cp.log").open("wb") as log:
        cp = subprocess.Popen([sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0", "--data-dir", str(data),
                               "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                               "--tls-client-ca", str(pki.ca)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        endpoint = data / "endpoint"
        wait_until(lambda: endpoint.exists() or cp.poll() is not None, timeout=60, what="the TLS control plane's endpoint")
        assert cp.poll() is None, (tmp_path / "cp.log").read_text()
        addr = ["--addr", endpoint.read_text().strip()]
        tls = ["--tls-ca", str(pki.ca), "--tls-server-name", "localhost"]
        client = ["--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
        outcomes = {
            "plaintext, as a grpc: probe": _health(*addr).returncode,
            "tls without the client certificate mTLS wants": _health(*addr, *tls).returncode,
            "tls with it": _health(*addr, *tls, *client).returncode,
        }
        assert outcomes == {"plaintext, as a grpc: probe": 1, "tls without the client certificate mTLS wants": 1,
                            "tls with it": 0}  # fmt: skip
    finally:
        cp.terminate()
        cp.wait(30)


def _as_image_user_with_read_search() -> list[str]:
    """uid/gid 10001 with CAP_DAC_READ_SEARCH kept across exec (ambient): this machine's interpreter lives
    under /root (0700), which the processes the servers spawn (the model probe, the workers) must reach.
    The capability bypasses read and search checks only: every write is checked as in the pod."""
    return ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]  # fmt: skip


def _cli(addr: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    out = subprocess.run([sys.executable, "-m", "modelfleet.cli", "--addr", addr, *args], capture_output=True, text=True,
                         timeout=120, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
    assert out.returncode == 0, f"modelfleet {' '.join(args)}: {out.stderr}"
    return out


def _owned(path: Path, uid: int, gid: int, mode: int) -> Path:
    path.mkdir(parents=True)
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):  # the agent first: it drains its workers
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_uid_10001_on_the_ownership_kubernetes_leaves_serves_a_model(tmp_path: Path) -> None:
    """The issue's reproduction and its fix, with the owners the kubelet and the init container leave:
    a fresh volume is root:root 0755 (the control plane fails with PermissionError); fsGroup makes it
    root:10001 2775; the DaemonSet's hostPath is root:root 0755 until the init container's own command
    runs. The agent then caches a model and runs its worker as uid 10001."""
    why = _can_run_as_image_user()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="mf-own-"))
    os.chmod(base, 0o755)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        bare = _owned(base / "bare", 0, 0, 0o755)
        failed = subprocess.run([*_as_image_user_with_read_search(), sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0",
                                 "--data-dir", str(bare / "control-plane")], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert failed.returncode != 0 and "PermissionError" in failed.stderr
        volume = _owned(base / "volume", 0, 10001, 0o2775)  # what fsGroup: 10001 leaves
        procs.append(subprocess.Popen([*_as_image_user_with_read_search(), sys.executable, "-m", "control_plane.main", "--listen", "127.0.0.1:0",
                                       "--data-dir", str(volume / "control-plane"), "--auth", "off"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        endpoint = volume / "control-plane" / "endpoint"
        addr = wait_until(lambda: endpoint.exists() and endpoint.read_text().strip(), timeout=60, what="the endpoint as uid 10001")
        host = _owned(base / "host" / "agent", 0, 0, 0o755)  # hostPath DirectoryOrCreate
        [agent_pod] = [pod for name, pod in pod_specs() if name == "modelfleet-agent"]
        [init] = agent_pod["spec"]["initContainers"]
        mount = init["volumeMounts"][0]["mountPath"]
        subprocess.run([c.replace(mount, str(host)) for c in init["command"]], check=True, timeout=30)
        procs.append(subprocess.Popen([*_as_image_user_with_read_search(), sys.executable, "-m", "node_agent.main", "--control-plane", addr,
                                       "--data-dir", str(host), "--cpus", "1"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        node_id = host / "node_id"
        wait_until(lambda: node_id.exists() and node_id.read_text().strip() in _cli(addr, "nodes", "list", "--state", "ready").stdout,
                   timeout=60, what="the uid-10001 agent's node ready")  # fmt: skip
        _cli(addr, "models", "upload", str(onnx_add(base / "add.onnx")), "--model-id", "add")
        _cli(addr, "deployments", "start", "add", "--wait-for", "started", "--timeout", "60s")
        assert "[[2.0, 4.0, 6.0, 8.0]]" in _cli(addr, "infer", "add", "--input", "x=[[1, 2, 3, 4]]").stdout.replace("\n", "")
        workers = worker_processes(host)
        assert workers and {Path(f"/proc/{pid}").stat().st_uid for pid in workers} == {10001}
        assert {p.stat().st_uid for p in (host / "models").iterdir()} == {10001}
    finally:
        _stop_all(procs)
        shutil.rmtree(base, ignore_errors=True)


def _gateway_as_deployed(args: list[str], *, control_plane: str, token: str, ready: Path, log: Path) -> tuple[Proc, str]:
    """The gateway Deployment's container command on 127.0.0.1 (any free ports), its key in the
    environment as the Secret puts it there; returns the process and the address it serves."""
    local = {"--control-plane": control_plane, "--listen": "127.0.0.1:0", "--metrics-port": "0", "--metrics-host": "127.0.0.1"}
    argv = [f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in local else a for a in args]
    proc = Proc("gateway", [sys.executable, "-m", "control_plane.gateway.main", *argv, "--ready-file", str(ready)],
                log_path=log, env={"MODELFLEET_TOKEN": token})  # fmt: skip
    port = wait_until(lambda: ready.exists() and json.loads(ready.read_text())["port"], timeout=60, what=f"{log.name}'s ready file")
    return proc, f"127.0.0.1:{port}"


def _infer_add(address: str, token: str) -> list[float]:
    req = pb.ModelInferRequest(model_name="add")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4]))
    with authed_channel(address, token) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=30)
    return [float(v) for v in np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)]


def test_the_gateway_deployment_serves_and_its_probes_hold_through_a_control_plane_outage(tmp_path: Path) -> None:
    """The manifest's gateway command line, against a real fleet: the readiness command fails until the
    first routes snapshot (a gateway that knows no route takes no traffic), then passes, and keeps passing
    (serving too) after kill -9 of the control plane; the liveness port answers throughout."""
    [(_, _, container)] = [(n, p, c) for n, p, c in containers() if n == "modelfleet-gateway"]
    readiness = container["readinessProbe"]["exec"]["command"]
    assert container["livenessProbe"]["tcpSocket"]["port"] == "grpc"

    def ready_probe(address: str) -> subprocess.CompletedProcess[str]:
        return _health(*[address if a == flag_value(readiness, "--addr") else a for a in readiness[2:]])

    c = Cluster(tmp_path / "fleet")
    gateways: list[Proc] = []
    unreachable = socket.socket()
    unreachable.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    try:
        c.start_control_plane()
        c.start_agent("node-a", cpus=2)
        c.wait_nodes(1)
        c.upload(onnx_add(tmp_path / "add.onnx"), "add")
        start = dpb.StartDeploymentRequest(model_id="add", wait_for=dpb.WAIT_FOR_STARTED)
        start.timeout.FromSeconds(60)
        c.deployments.StartDeployment(start, timeout=90)
        gw_key, caller = c.create_key("gateway").token, c.create_key("inference").token
        lonely, lonely_addr = _gateway_as_deployed(
            container["args"], control_plane=f"127.0.0.1:{unreachable.getsockname()[1]}", token=gw_key,
            ready=tmp_path / "lonely.ready", log=tmp_path / "lonely.log")  # fmt: skip
        gateways.append(lonely)
        gw, gw_addr = _gateway_as_deployed(container["args"], control_plane=c.addr, token=gw_key,
                                           ready=tmp_path / "gw.ready", log=tmp_path / "gw.log")  # fmt: skip
        gateways.append(gw)
        wait_until(lambda: ready_probe(gw_addr).returncode == 0, timeout=60, what="the gateway's readiness after its snapshot")
        assert _infer_add(gw_addr, caller) == [2.0, 4.0, 6.0, 8.0]
        never_synced = ready_probe(lonely_addr)
        assert never_synced.returncode == 1 and "NOT_SERVING" in never_synced.stdout, never_synced.stdout
        assert c.cp is not None
        c.cp.kill()
        for address in (gw_addr, lonely_addr):  # the liveness probe: the gRPC port accepts connections
            socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=10).close()
        assert ready_probe(gw_addr).returncode == 0, "an outage must not take the gateway out of its Service"
        assert _infer_add(gw_addr, caller) == [2.0, 4.0, 6.0, 8.0]
    finally:
        unreachable.close()
        for p in gateways:
            p.stop()
        c.close()

