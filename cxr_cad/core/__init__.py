"""The foundation every layer may use: atomic writes, provenance (hashes, versions), the shared
column lists, worker counts and progress bars. Nothing here imports torch, pandas or another
cxr_cad package except :mod:`cxr_cad.errors`."""
