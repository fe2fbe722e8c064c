"""``cxr-cad listen``: a DICOM node (C-STORE SCP) that scores each radiograph as it arrives."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from cxr_cad import api
from cxr_cad.cli.options import add_policy_options, policy_from
from cxr_cad.errors import ConfigError

DESCRIPTION = """\
Run a DICOM storage node (C-STORE SCP, pynetdicom) that scores each radiograph as it
arrives and writes its DICOM SR (TID 1500) into OUT/dicom/, or sends it on with STOW-RS
(--stow URL) or C-STORE (--forward AET@HOST:PORT). Every received instance is recorded in
OUT/journal.jsonl; OUT/predictions.csv and OUT/rejected.csv (reason codes) are rewritten after
each scored batch. Non-images are stored and rejected with a reason code; datasets that do
not parse are answered 0xC210. Research use only: results are not for diagnostic use.

Access control: it listens on 127.0.0.1 unless --host says otherwise; associations must call
it by its --aet (else A-ASSOCIATE-RJ reason 7, called AE title not recognised) and, with
--allow-calling, come from a listed AE title (else reason 3, calling AE title not recognised).
--tls-cert/--tls-key make it DICOM TLS; with --tls-ca, senders must present a certificate that
CA signed. Stores are refused with 0xA700 (out of resources) when the disk is short of
--min-free-mb or a file cannot be written, never accepted and lost. Every association, store
and result sent is a line in OUT/audit.jsonl (--audit FILE): who, what, when, outcome.

Stops cleanly on SIGTERM or Ctrl-C: no new associations, queued instances are scored, the
CSVs written. Restarting with the same --out scores what was received but not yet scored.

Exit codes: 0 stopped cleanly; 2 bad arguments, a missing model, an --out that cannot be
created or written; 1 a corrupt model bundle, port in use or another failure."""


def _forward(text: str) -> tuple[str, str, int]:
    from cxr_cad.pacs.scp import parse_forward  # pynetdicom: only when --forward is given

    try:
        return parse_forward(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be within 0..65535, not {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "listen",
        help="DICOM node (C-STORE SCP) that scores radiographs on arrival",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, metavar="BUNDLE", help="model bundle (.pt), or the run folder holding model.pt"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="journal, received instances, CSVs, DICOM results")
    p.add_argument("--aet", default="CXRCAD", help="this node's AE title (default CXRCAD)")
    p.add_argument("--port", type=_port, default=11112, help="TCP port (default 11112)")
    p.add_argument(
        "--host",
        "--bind",
        dest="host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )
    p.add_argument(
        "--allow-calling",
        action="append",
        default=None,
        metavar="AET",
        help="accept associations only from this calling AE title (repeatable; default any)",
    )
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="DICOM TLS: this node's certificate (PEM)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="DICOM TLS: its private key (PEM)")
    p.add_argument(
        "--tls-ca", default=None, metavar="PEM", help="DICOM TLS: require client certificates signed by this CA"
    )
    p.add_argument("--audit", default=None, metavar="FILE", help="audit log, JSON lines (default OUT/audit.jsonl)")
    p.add_argument(
        "--min-free-mb",
        type=int,
        default=64,
        metavar="MB",
        help="refuse stores (0xA700) while less than this is free on OUT's disk (default 64)",
    )
    dest = p.add_mutually_exclusive_group()
    dest.add_argument(
        "--stow",
        default=None,
        metavar="URL",
        help="send each SR with STOW-RS to this DICOMweb archive "
        "(credentials from CXR_CAD_DICOMWEB_USER/_PASSWORD, _TOKEN or ~/.netrc)",
    )
    dest.add_argument(
        "--forward", type=_forward, default=None, metavar="AET@HOST:PORT", help="send each SR with C-STORE to this node"
    )
    p.add_argument("--secondary-capture", action="store_true", help="also a Grad-CAM Secondary Capture per image")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_policy_options(p, lateral_help="score lateral views too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = api.ListenOptions(
        model=Path(args.model),
        out_dir=Path(args.out),
        aet=args.aet,
        host=args.host,
        port=args.port,
        allowed_calling=tuple(args.allow_calling or ()),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        audit=Path(args.audit) if args.audit else None,
        min_free_mb=args.min_free_mb,
        stow_url=args.stow,
        forward=args.forward,
        secondary_capture=args.secondary_capture,
        predict=api.PredictOptions(workers=0, device=args.device, policy=policy_from(args)),
    )
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}

    def listening(out: Path) -> None:
        print(
            f"cxr-cad listen: {args.aet} on {args.host}:{args.port}{' (DICOM TLS)' if args.tls_cert else ''}, "
            f"results in {out} (SIGTERM or Ctrl-C to stop)",
            flush=True,
        )

    try:
        result = api.listen(options, stop, on_listening=listening)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(
        f"cxr-cad listen: stopped; {result.n_journaled} instance(s) journaled, {result.n_scored} scored; {result.dicom}"
    )
    return 0
