"""PACS adapters: a DICOMweb archive as a source, DICOM SR / Secondary Capture as output, a C-STORE receiver.

* :mod:`cxr_cad.pacs.client`  – DICOMweb client (dicomweb-client): credentials from env/netrc, TLS, retries
* :mod:`cxr_cad.pacs.query`   – QIDO-RS selection, WADO-RS fetch into a spool folder
* :mod:`cxr_cad.pacs.source`  – streams fetched chunks to a scoring callback, journaled by SOP UID
* :mod:`cxr_cad.pacs.journal` – the append-only, fsynced journal both the source and the node keep
* :mod:`cxr_cad.pacs.sr`      – TID 1500 Structured Report of one result (highdicom)
* :mod:`cxr_cad.pacs.sc`      – Grad-CAM Secondary Capture (highdicom)
* :mod:`cxr_cad.pacs.findings` – the findings of a result row (binary / multi-label), their codes, the shift verdict
* :mod:`cxr_cad.pacs.fhir`    – ``--fhir-out`` / ``--fhir-url``: FHIR R4 DiagnosticReport + Observations per study
* :mod:`cxr_cad.pacs.results` – the outputs of a run together; what a rerun with new outputs owes
* :mod:`cxr_cad.pacs.output`  – ``--dicom-out`` / ``--stow`` / ``--forward``: writes and sends the objects of a run
* :mod:`cxr_cad.pacs.archive` – sending objects (STOW-RS, C-STORE) and the latest revision already in the archive
* :mod:`cxr_cad.pacs.scp`     – C-STORE SCP (pynetdicom) that stores what arrives and hands it to a callback

The adapters import no engine: :mod:`cxr_cad.api` (``predict_dicomweb``, ``predict_sources``,
``Listener``/``listen``) joins them to the predict engine (docs/pacs.md).
"""
