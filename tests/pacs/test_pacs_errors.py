"""PACS settings with bad values raise ConfigError (a UsageError: exit code 2), per cxr_cad.errors."""

from __future__ import annotations

import pytest

from cxr_cad.api import predict_dicomweb
from cxr_cad.errors import ConfigError, UsageError
from cxr_cad.pacs.client import make_client, parse_url
from cxr_cad.pacs.query import parse_query
from cxr_cad.pacs.source import REJECTED_COLUMNS


def test_bad_query_url_and_retries_are_config_errors(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="not KEYWORD=VALUE"):
        parse_query(["Modality"])
    with pytest.raises(ConfigError, match="not a DICOMweb URL"):
        parse_url("dicomweb:ftp://x")
    with pytest.raises(ConfigError, match="credentials"):
        parse_url("dicomweb:http://u:p@host/dicom-web")
    monkeypatch.setenv("CXR_CAD_DICOMWEB_RETRIES", "many")
    with pytest.raises(ConfigError, match="whole number"):
        make_client("dicomweb:http://127.0.0.1:1/dicom-web")
    with pytest.raises(ConfigError, match="chunk size"):
        predict_dicomweb("dicomweb:http://127.0.0.1:1/dicom-web", tmp_path, tmp_path / "m.pt", chunk_size=0)
    assert issubclass(ConfigError, UsageError)  # the CLI still exits 2


def test_rejected_columns_extend_the_shared_ones():
    from cxr_cad.core.columns import REJECTED_COLUMNS as SHARED

    assert REJECTED_COLUMNS == [*SHARED, "sop_instance_uid"]


def test_a_malformed_forward_node_is_a_config_error_and_exit_2(capsys):
    from cxr_cad.cli import main
    from cxr_cad.pacs.scp import parse_forward

    assert parse_forward("PACS@10.0.0.5:104") == ("PACS", "10.0.0.5", 104)
    for bad in ("PACS", "PACS@host", "@host:104", "PACS@host:port", "A" * 17 + "@h:1"):
        with pytest.raises(ConfigError, match="AET@HOST:PORT"):
            parse_forward(bad)
    assert main(["listen", "--model", "m.pt", "--out", "o", "--forward", "PACS@host"]) == 2
    assert "AET@HOST:PORT" in capsys.readouterr().err
