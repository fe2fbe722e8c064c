"""DICOM TLS towards a ``dimse://`` archive, tested against ``cxr-cad listen`` with mutual TLS (it is
a storage SCP, so at the association level: C-ECHO). With our client certificate and the CA the
association is made and audited as TLS; without a certificate, or without TLS, it is refused.
The TLS options are checked (exit 2) before the archive is asked anything."""

from __future__ import annotations

import json

import pytest

from cxr_cad.cli import main
from cxr_cad.pacs.audit import AuditLog
from cxr_cad.pacs.dimse import DimseNode, DimseOptions, DimseSource
from tests.factories.orthanc import free_port
from tests.inference.test_predict import bundle_path  # noqa: F401 - session fixture
from tests.pacs.test_pacs_listen import start_listener
from tests.pacs.test_pacs_listen_access import _pki, stop


def test_dimse_source_speaks_dicom_tls_to_listen(bundle_path, tmp_path):
    pki = _pki(tmp_path / "pki")
    ca, client, server = (f"{pki[k]}" for k in ("ca", "client", "server"))
    proc, port = start_listener(
        bundle_path,
        tmp_path / "node",
        "--tls-cert",
        f"{server}.pem",
        "--tls-key",
        f"{server}.key",
        "--tls-ca",
        f"{ca}.pem",
    )
    node = DimseNode("CXRCADTEST", "127.0.0.1", port)
    audit_path = tmp_path / "audit.jsonl"
    try:
        audit = AuditLog(audit_path)
        tls = DimseOptions(
            retries=0, timeout_s=10, tls_ca=f"{ca}.pem", tls_cert=f"{client}.pem", tls_key=f"{client}.key"
        )
        DimseSource(node, tls, audit=audit).echo()  # mutual TLS: made
        with pytest.raises(ConnectionError):  # the node wants a client certificate
            DimseSource(node, DimseOptions(retries=0, timeout_s=10, tls_ca=f"{ca}.pem"), audit=audit).echo()
        with pytest.raises(ConnectionError):  # plain TCP to a TLS node
            DimseSource(node, DimseOptions(retries=0, timeout_s=10), audit=audit).echo()
        audit.close()
    finally:
        stop(proc)
    records = [json.loads(x) for x in audit_path.read_text().splitlines()]
    assoc = [(r["outcome"], r["tls"]) for r in records if r["event"] == "association"]
    assert assoc == [("success", True), ("failure", True), ("failure", False)]


def test_tls_options_of_predict_are_checked_first(bundle_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CXR_CAD_DIMSE_RETRIES", "0")
    src = f"dimse://PACS@127.0.0.1:{free_port()}"  # nobody listens: a checked option fails before that

    def predict(out: str, *extra: str, source: str = src) -> int:
        return main(["predict", source, "--model", str(bundle_path), "--out", str(tmp_path / out), *extra])

    assert predict("a", "--tls-cert", str(tmp_path / "c.pem")) == 2  # a certificate without its key
    assert predict("b", "--tls-ca", str(tmp_path / "missing.pem")) == 2
    assert predict("c", "--tls-ca", "x.pem", source="dicomweb:http://127.0.0.1:1/dicom-web") == 2
    err = capsys.readouterr().err
    assert "--tls-cert and --tls-key" in err and "--tls-ca: cannot load" in err and "dimse://" in err
    assert not any((tmp_path / d / ".dimse").exists() for d in "abc")
