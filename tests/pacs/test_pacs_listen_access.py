"""``cxr-cad listen`` as a node a hospital can trust: 127.0.0.1 by default, an AE allowlist answered
with the right A-ASSOCIATE-RJ reasons, DICOM TLS with client certificates (a CA and certificates
made here), an audit trail, UTC timestamps, and a full disk answered 0xA700 instead of a lost
instance."""

from __future__ import annotations

import datetime as dt
import errno
import json
import re
import signal
import ssl
import threading
import time
from pathlib import Path

import numpy as np
import pydicom

from cxr_cad.cli import main
from tests.factories.dicom import write_dicom
from tests.factories.orthanc import free_port
from tests.inference.test_predict import bundle_path, cohort_pixels, read_csv  # noqa: F401 - session fixture
from tests.pacs.test_pacs_listen import start_listener


def images(root: Path, n: int, *, start: int = 0) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [
        write_dicom(root / f"i{start + k:04d}.dcm", img.astype(np.uint16) * 16, patient_name="ZZSECRET^NAME")
        for k, (img, _) in enumerate(cohort_pixels(n, seed=start + 11))
    ]


def associate(port: int, *, calling: str = "GOODSCU", called: str = "CXRCADTEST", tls=None):
    """(association, [(result, source, reason)] of an A-ASSOCIATE-RJ) from a pynetdicom SCU."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    rejected = []

    def on_rejected(event):
        rsp = event.assoc.acceptor.primitive
        rejected.append((rsp.result, rsp.result_source, rsp.diagnostic))

    ae = AE(ae_title=calling)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    ae.acse_timeout = ae.network_timeout = 10
    kwargs = {"tls_args": tls} if tls is not None else {}
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_REJECTED, on_rejected)], **kwargs)
    return assoc, rejected


def store(port: int, paths, **kw) -> list[int]:
    assoc, rejected = associate(port, **kw)
    assert assoc.is_established, rejected
    codes = [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    assoc.release()
    return codes


def stop(proc) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out, err


def test_listen_binds_loopback_by_default():
    from cxr_cad import api
    from cxr_cad.cli import build_parser

    assert api.ListenOptions(model=Path("m"), out_dir=Path("o")).host == "127.0.0.1"
    args = build_parser("listen").parse_args(["listen", "--model", "m.pt", "--out", "o"])
    assert args.host == "127.0.0.1"


def test_allowlist_rejects_with_the_right_reasons_and_everything_is_audited(bundle_path, tmp_path):
    out = tmp_path / "node"
    proc, port = start_listener(bundle_path, out, "--allow-calling", "GOODSCU", "--allow-calling", "OTHERSCU")
    try:
        assoc, rejected = associate(port, calling="EVILHOST")
        assert not assoc.is_established and rejected == [(1, 1, 3)]  # calling AE title not recognised
        assoc, rejected = associate(port, calling="GOODSCU", called="NOTCXR")
        assert not assoc.is_established and rejected == [(1, 1, 7)]  # called AE title not recognised
        sent = images(tmp_path / "src", 3)
        assert store(port, sent) == [0, 0, 0]
        time.sleep(1.5)
    finally:
        stdout, stderr = stop(proc)
    preds = read_csv(out / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in preds) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in sent)
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    refused = [r for r in audit if r["event"] == "association" and r["outcome"] == "refused"]
    assert [(r["calling_ae"], r["called_ae"], r["reject_reason"]) for r in refused] == [
        ("EVILHOST", "CXRCADTEST", 3),
        ("GOODSCU", "NOTCXR", 7),
    ]
    assert all(re.fullmatch(r"127\.0\.0\.1:\d+", r["peer"]) for r in refused)
    stores = [r for r in audit if r["event"] == "store"]
    assert len(stores) == 3 and all(r["outcome"] == "success" and r["calling_ae"] == "GOODSCU" for r in stores)
    assert all(r["study_instance_uid"] and r["sop_instance_uid"] and r["status"] == "0x0000" for r in stores)
    assert {r.get("state") for r in audit if r["event"] == "association" and r["outcome"] == "success"} == {
        "accepted",
        "released",
    }
    for rec in audit:
        assert dt.datetime.strptime(rec["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    journal = [json.loads(x) for x in (out / "journal.jsonl").read_text().splitlines()]
    assert all(rec["time"].endswith("Z") for rec in journal)
    received = [r for r in journal if r["event"] == "received"]
    assert all(r["calling_ae"] == "GOODSCU" and r["peer"].startswith("127.0.0.1:") for r in received)
    # the tables do not grow journal-only columns
    assert not {"time", "peer", "calling_ae"} & set(preds[0])
    text = (out / "audit.jsonl").read_text() + stdout + stderr
    assert "ZZSECRET" not in text
    # every log line starts with its level and a UTC ISO timestamp
    lines = [ln for ln in stderr.splitlines() if ln.startswith(("INFO ", "WARNING ", "ERROR "))]
    assert lines and all(re.match(r"[A-Z]+ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", ln) for ln in lines)


def _pki(root: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA (PEM)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem, key, cert):
        (root / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (root / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("cxr-cad test CA"))
        .issuer_name(name("cxr-cad test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca)
    for stem, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("modality.test")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(stem))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        write(stem, key, cert)
    return {k: root / k for k in ("ca", "server", "client")}


def _client_tls(pki, *, with_cert: bool):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]) + ".pem")
    if with_cert:
        ctx.load_cert_chain(str(pki["client"]) + ".pem", str(pki["client"]) + ".key")
    return (ctx, "127.0.0.1")


def test_dicom_tls_with_client_certificates(bundle_path, tmp_path):
    pki = _pki(tmp_path / "pki")
    out = tmp_path / "node"
    proc, port = start_listener(
        bundle_path,
        out,
        "--tls-cert",
        f"{pki['server']}.pem",
        "--tls-key",
        f"{pki['server']}.key",
        "--tls-ca",
        f"{pki['ca']}.pem",
    )
    try:
        sent = images(tmp_path / "src", 2)
        assert store(port, sent, tls=_client_tls(pki, with_cert=True)) == [0, 0]
        assoc, _ = associate(port)  # plain TCP to a TLS node
        assert not assoc.is_established
        assoc, _ = associate(port, tls=_client_tls(pki, with_cert=False))  # TLS without a client certificate
        assert not assoc.is_established
        time.sleep(1.5)
    finally:
        stop(proc)
    preds = read_csv(out / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in preds) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in sent)
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert (
        all(r["tls"] for r in audit if r["event"] == "store") and len([r for r in audit if r["event"] == "store"]) == 2
    )


def test_tls_options_are_checked_before_listening(bundle_path, tmp_path, capsys):
    args = ["listen", "--model", str(bundle_path), "--out", str(tmp_path / "o"), "--port", str(free_port())]
    assert main([*args, "--tls-cert", str(tmp_path / "missing.pem")]) == 2
    assert main([*args, "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "k")]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_disk_below_the_reserve_refuses_stores_with_0xa700(bundle_path, tmp_path):
    out = tmp_path / "node"
    proc, port = start_listener(bundle_path, out, "--min-free-mb", str(10**9))  # no disk has a petabyte free
    try:
        sent = images(tmp_path / "src", 2)
        assert store(port, sent) == [0xA700, 0xA700]
    finally:
        stop(proc)
    assert list((out / "received").iterdir()) == []
    journal = (out / "journal.jsonl").read_text()
    assert '"received"' not in journal
    audit = [json.loads(x) for x in (out / "audit.jsonl").read_text().splitlines()]
    assert [r["status"] for r in audit if r["event"] == "store"] == ["0xA700", "0xA700"]


def test_a_full_disk_mid_store_is_refused_not_lost_and_accepted_once_space_is_back(bundle_path, tmp_path, monkeypatch):
    """ENOSPC injected into the write of the received file, then into the journal: 0xA700 each time,
    nothing half-kept; the sender's retry after space is back is stored and scored exactly once."""
    from cxr_cad import api
    from cxr_cad.pacs import journal as journal_mod
    from cxr_cad.pacs import scp

    port = free_port()
    opts = api.ListenOptions(
        model=bundle_path,
        out_dir=tmp_path / "node",
        aet="CXRCADTEST",
        port=port,
        predict=api.PredictOptions(workers=0, device="cpu"),
        batch_wait_s=0.2,
    )
    sent = images(tmp_path / "src", 3)
    full = {"file": True, "journal": False}
    real_write, real_append = scp.atomic_write_bytes, journal_mod.Journal.append

    def write(path, data, **kw):
        if full["file"]:
            from cxr_cad.core.atomic import _output_error

            raise _output_error(Path(path), OSError(errno.ENOSPC, "No space left on device"), "free space")
        return real_write(path, data, **kw)

    def append(self, records):
        if full["journal"] and any(r.get("event") == "received" for r in records):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, records)

    monkeypatch.setattr(scp, "atomic_write_bytes", write)
    monkeypatch.setattr(journal_mod.Journal, "append", append)
    stop_event = threading.Event()
    ready = threading.Event()
    result = {}
    t = threading.Thread(
        target=lambda: result.update(r=api.listen(opts, stop_event, on_listening=lambda _: ready.set())), daemon=True
    )
    t.start()
    assert ready.wait(60)
    try:
        assert store(port, sent[:1]) == [0xA700]  # the file cannot be written
        full.update(file=False, journal=True)
        assert store(port, sent[1:2]) == [0xA700]  # the file can, its journal record cannot
        assert not (opts.out_dir / "received" / f"{pydicom.dcmread(sent[1]).SOPInstanceUID}.dcm").exists()
        full.update(journal=False)  # space is back: the sender retries
        assert store(port, sent) == [0, 0, 0]
        time.sleep(1.5)
    finally:
        stop_event.set()
        t.join(120)
    preds = read_csv(opts.out_dir / "predictions.csv")
    assert sorted(r["sop_instance_uid"] for r in preds) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in sent)
    assert result["r"].n_scored == 3
