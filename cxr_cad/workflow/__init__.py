"""Workflows: `cxr-cad run WORKFLOW.yaml` and `cxr-cad demo`."""
