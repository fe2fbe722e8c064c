"""PACS round trip: a DICOMweb archive as a source, DICOM SR / Secondary Capture as output, a C-STORE node.

* :mod:`cxr_cad.pacs.client`  – DICOMweb client (dicomweb-client): credentials from env/netrc, TLS, retries
* :mod:`cxr_cad.pacs.query`   – QIDO-RS selection, WADO-RS fetch into a spool folder
* :mod:`cxr_cad.pacs.source`  – streaming producer feeding the predict engine, resumable by SOP UID
* :mod:`cxr_cad.pacs.sr`      – TID 1500 Structured Report of one result (highdicom)
* :mod:`cxr_cad.pacs.sc`      – Grad-CAM Secondary Capture (highdicom)
* :mod:`cxr_cad.pacs.output`  – ``--dicom-out`` / ``--stow``: writes and sends the objects of a run
* :mod:`cxr_cad.pacs.scp`     – ``cxr-cad listen``: C-STORE SCP that scores on arrival (pynetdicom)
* :mod:`cxr_cad.api._pacs` – the options the CLI commands share

See docs/pacs.md.
"""
