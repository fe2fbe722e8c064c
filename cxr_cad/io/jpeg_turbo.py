"""A pydicom decoding plugin: JPEG baseline, extended (8/12-bit) and lossless through libjpeg-turbo.

pydicom 3.0 has no permissively licensed decoder for two JPEG syntaxes of old CR archives:

* **JPEG Extended 12-bit** (1.2.840.10008.1.2.4.51): pydicom's ``pillow`` and ``gdcm``
  plugins refuse more than 8 bits, and pylibjpeg-libjpeg (GPL-3.0, an optional extra here)
  rejects the spectral-selection values that old encoders wrote in sequential scans ("scan
  start must be zero and scan stop must be 63"), which dcmtk accepts with a warning;
* **JPEG Lossless** (Process 14, 1.2.840.10008.1.2.4.57 / .70): only ``gdcm`` and libjpeg.

libjpeg-turbo 3 (through imagecodecs, BSD-3; libjpeg-turbo itself IJG/BSD-3) decodes
8 and 12-bit lossy and 2-16-bit lossless JPEG, warns about those scan values like
dcmtk's ``dcmdjpeg`` (same IJG lineage), and gives ``dcmdjpeg``'s pixels exactly
(``tests/io/test_decoders.py``). python-gdcm was tried first and dropped: on byte-mutated
codestreams its JPEG codec killed the process (SIGSEGV / uncaught C++ exception) within the
first 100 mutations, and on 8-bit data with fewer than 8 bits stored it aborts outright;
libjpeg-turbo, fuzzed by OSS-Fuzz, survived 4,000 such mutations here (docs/io.md).

No colour conversion is done here: a 3-sample frame comes back as stored (pixel-interleaved)
and pydicom converts YBR to RGB by (0028,0004) as for every plugin.

Plugin interface (pydicom's decoder plugin guide): :func:`is_available`,
:data:`DECODER_DEPENDENCIES` and the decode function :func:`decode_frame`, registered by
:func:`cxr_cad.io.decoders.register_plugins` under :data:`LABEL`.
"""

from __future__ import annotations

from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1

try:
    import imagecodecs

    HAVE_IMAGECODECS = hasattr(imagecodecs, "jpeg8_decode")
except ImportError:  # imagecodecs is a core dependency; a broken install only loses this plugin
    HAVE_IMAGECODECS = False

#: The label this plugin is registered under in pydicom's JPEG decoders.
LABEL = "libjpeg-turbo"
#: What the plugin needs, per transfer syntax (pydicom's plugin interface).
DECODER_DEPENDENCIES = {
    uid: ("imagecodecs",) for uid in (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1)
}


def is_available(uid: str) -> bool:
    """True when imagecodecs' libjpeg-turbo codec is importable and ``uid`` is a JPEG syntax."""
    return HAVE_IMAGECODECS and uid in DECODER_DEPENDENCIES


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """Decode one JPEG frame (pydicom's decoder plugin interface): the samples as stored.

    Raises:
        ValueError: libjpeg-turbo's error, or a frame whose size or sample count is not the
            one (0028,0010) Rows, (0028,0011) Columns and (0028,0002) Samples per Pixel declare.
    """
    samples = runner.samples_per_pixel
    try:
        if samples == 3:  # no colour conversion
            frame = imagecodecs.jpeg8_decode(src, colorspace="RGB", outcolorspace="RGB")
        else:
            frame = imagecodecs.jpeg8_decode(src)
    except Exception as exc:  # imagecodecs.Jpeg8Error and friends
        raise ValueError(f"libjpeg-turbo: {exc}") from exc
    expected = (runner.rows, runner.columns) + ((samples,) if samples > 1 else ())
    if frame.shape != expected:
        raise ValueError(f"libjpeg-turbo decoded a {frame.shape} frame, but the data set declares {expected}")
    if samples == 3:
        runner.set_option("planar_configuration", 0)  # libjpeg-turbo returns colour-by-pixel
    width = 1 if runner.bits_allocated <= 8 else 2
    if frame.dtype.itemsize > width:
        raise ValueError(
            f"the JPEG sample precision needs {8 * frame.dtype.itemsize} bits, but (0028,0100) "
            f"Bits Allocated is {runner.bits_allocated}"
        )
    return frame.astype(f"<u{width}", copy=False).tobytes()
