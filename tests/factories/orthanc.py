"""A private Orthanc archive for the PACS tests: 127.0.0.1 only, free ports, temporary storage.

:func:`start_orthanc` runs Debian's ``Orthanc`` binary (packages ``orthanc`` and
``orthanc-dicomweb``, installed by ``.ci/run``) with a temporary JSON configuration: HTTP
and DICOM ports picked free, storage in a temporary folder, the DICOMweb plugin loaded, HTTP
basic authentication on with a test user, remote access off. Never the system service.
:func:`skip_reason` says why the tests cannot run (missing packages), or None.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ORTHANC = "/usr/sbin/Orthanc"
PLUGIN_CANDIDATES = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so")
USER, PASSWORD = "cxrtest", "cxrtest-secret"


def _plugin() -> str | None:
    found = [p for p in PLUGIN_CANDIDATES if Path(p).exists()]
    if not found:
        found = sorted(str(p) for p in Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*"))
    return found[0] if found else None


def skip_reason() -> str | None:
    orthanc = shutil.which("Orthanc") or (ORTHANC if Path(ORTHANC).exists() else None)
    if orthanc is None:
        return "Orthanc is not installed (Debian package 'orthanc'; .ci/run installs it as root)"
    if _plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    proc: subprocess.Popen
    http_port: int
    dicom_port: int
    aet: str
    root: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, path: str, method: str = "GET", **kwargs):
        r = requests.request(method, self.url + path, auth=(USER, PASSWORD), timeout=30, **kwargs)
        r.raise_for_status()
        return r.json() if r.content else None

    def upload(self, path: Path) -> dict:
        return self.rest("/instances", "POST", data=Path(path).read_bytes())

    def clear(self) -> None:
        for study in self.rest("/studies"):
            self.rest(f"/studies/{study}", "DELETE")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_orthanc(
    root: Path, *, modalities: dict | None = None, auth: bool = True, http_port: int | None = None
) -> Orthanc:
    """Start Orthanc with a configuration under ``root``; wait until its REST API answers.

    ``auth=False`` (screenshots with a headless browser only): no password, still 127.0.0.1 only.
    ``http_port``: this HTTP port instead of a free one (an archive that comes up where one was down).
    """
    root.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = http_port or free_port(), free_port()
    config = {
        "Name": "cxr-cad-test",
        "StorageDirectory": str(root / "db"),
        "IndexDirectory": str(root / "db"),
        "Plugins": [_plugin()],
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANCTEST",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities or {},
        "HttpTimeout": 60,
        "StableAge": 1,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 8,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "Ssl": False,
            "StudiesMetadata": "MainDicomTags",
            "SeriesMetadata": "MainDicomTags",
        },
    }
    cfg = root / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2))
    log_path = root / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [shutil.which("Orthanc") or ORTHANC, str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            start_new_session=True,
        )
    server = Orthanc(proc, http_port, dicom_port, "ORTHANCTEST", root, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            server.rest("/system")
            return server
        except requests.RequestException:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within 60 s: {log_path.read_text()[-2000:]}")
