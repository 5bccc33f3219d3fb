"""A private Docker Engine for the container tests: its own data root, exec root and socket under the test
session's temporary folder, started by hand and stopped by its pid; it never touches any other daemon.

Debian's docker.io and busybox-static are installed when missing (`make docker-engine` does the same
before the suite). The image the tests run is a static busybox in an otherwise empty root file system,
`docker import`ed: no registry is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

PACKAGES = ("docker.io", "busybox-static")
BUSYBOX = Path("/bin/busybox")
IMAGE = "scheduler-test/busybox:1"


def _static_busybox() -> bool:
    if not BUSYBOX.exists():
        return False
    with BUSYBOX.open("rb") as handle:
        return b"/lib64/ld-linux" not in handle.read(4096)  # a dynamic build names its loader up front


def packages_ensure() -> None:
    """Install Debian's docker.io and busybox-static when dockerd or a static busybox is missing."""
    if shutil.which("dockerd") and _static_busybox():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail(f"the container tests need Debian's {' and '.join(PACKAGES)} (apt-get install as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)


@dataclass
class Engine:
    """A running private dockerd."""

    root: Path
    host: str  # unix://... for DOCKER_HOST
    pid: int
    image: str = IMAGE

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.host, timeout=60)

    def containers(self) -> list[object]:
        """Every container on this engine (running or not), as the engine lists them."""
        client = self.client()
        try:
            return list(client.containers.list(all=True))
        finally:
            client.close()


def _rootfs_tar(path: Path) -> Path:
    """A tar of a root file system holding a static busybox and its applets (links), /tmp and a passwd."""
    tree = path / "rootfs"
    (tree / "bin").mkdir(parents=True, exist_ok=True)
    (tree / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (tree / "etc").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = tree / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    (tree / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
    (tree / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    archive = path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree, arcname=".")
    return archive


def engine_start(base: Path, timeout: float = 60) -> Engine:
    """Start dockerd on a socket under `base`, wait until it answers, import the busybox image."""
    packages_ensure()
    for part in ("data", "exec"):
        (base / part).mkdir(parents=True, exist_ok=True)
    socket = base / "docker.sock"
    pidfile = base / "docker.pid"
    log = (base / "dockerd.log").open("wb")
    argv = [
        "dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
        "--data-root", str(base / "data"), "--exec-root", str(base / "exec"), "--pidfile", str(pidfile),
        "-H", f"unix://{socket}", "--log-level", "warn",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    engine = Engine(root=base, host=f"unix://{socket}", pid=proc.pid)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"dockerd exited with {proc.returncode}: {(base / 'dockerd.log').read_text()[-2000:]}"
            )
        if socket.exists():
            with contextlib.suppress(Exception):
                client = engine.client()
                try:
                    client.ping()
                    break
                finally:
                    client.close()
        if time.monotonic() > deadline:
            engine_stop(engine)
            pytest.fail(
                f"dockerd did not answer within {timeout:.0f}s: {(base / 'dockerd.log').read_text()[-2000:]}"
            )
        time.sleep(0.2)
    client = engine.client()
    try:
        client.api.import_image_from_file(
            str(_rootfs_tar(base)),
            repository=IMAGE.split(":")[0],
            tag=IMAGE.split(":")[1],
            changes=["ENV PATH=/bin"],
        )
    finally:
        client.close()
    return engine


def engine_stop(engine: Engine, timeout: float = 30) -> None:
    """Remove every container of the engine, stop dockerd by its pid, then remove its folders."""
    with contextlib.suppress(Exception):
        client = engine.client()
        for container in client.containers.list(all=True):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        client.close()
    with contextlib.suppress(ProcessLookupError):
        os.kill(engine.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(engine.pid, os.WNOHANG)
        except ChildProcessError:
            break
        if done:
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(engine.pid, 0)
    shutil.rmtree(engine.root / "data", ignore_errors=True)
    shutil.rmtree(engine.root / "exec", ignore_errors=True)


class SocketForwarder(threading.Thread):
    """A unix socket that forwards to the engine's: the link a test cuts to make the engine fail mid-run."""

    def __init__(self, path: Path, target: str) -> None:
        super().__init__(daemon=True)
        self.path, self.target = path, target
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(16)
        self.links: list[socket.socket] = []
        self.cut = threading.Event()

    def run(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
            self.links += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for end in (a, b):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut_all(self) -> None:
        self.cut.set()
        self.server.close()
        self.path.unlink(missing_ok=True)
        for link in self.links:
            with contextlib.suppress(OSError):
                link.shutdown(socket.SHUT_RDWR)
