"""Test data made by the tests: synthetic cohorts, DICOM files, a real Orthanc on 127.0.0.1."""
