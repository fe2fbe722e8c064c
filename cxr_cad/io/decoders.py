"""Which pydicom decoding plugin decodes each compressed transfer syntax: permissive licences only by default.

pydicom, when no plugin is named, tries every installed plugin in its own registration
order, so what decodes a file would depend on whatever happens to be installed (GDCM, once
installed, comes first for everything). Here each syntax names its plugins in order, through
pydicom's public plugin API (``get_decoder(uid).available_plugins``, ``decoding_plugin=``):

=====================================  ==========================  =========================================
transfer syntax                        plugins, in order           packages (licence)
=====================================  ==========================  =========================================
JPEG Baseline, JPEG Extended 8-bit     pillow, libjpeg-turbo       Pillow (MIT-CMU; libjpeg-turbo BSD-3),
                                                                   imagecodecs (BSD-3; libjpeg-turbo 3)
JPEG Extended 12-bit                   libjpeg-turbo               imagecodecs (:mod:`cxr_cad.io.jpeg_turbo`)
JPEG Lossless (Process 14, SV1)        libjpeg-turbo               imagecodecs
JPEG-LS Lossless / Near-Lossless       pyjpegls                    pyjpegls (MIT; CharLS BSD-3)
JPEG 2000 Lossless / lossy             pylibjpeg, pillow           pylibjpeg-openjpeg (MIT; OpenJPEG BSD-2)
HTJ2K                                  pylibjpeg                   pylibjpeg-openjpeg
RLE Lossless                           pylibjpeg, pydicom          pylibjpeg-rle (MIT), pydicom (MIT)
=====================================  ==========================  =========================================

``libjpeg-turbo`` is this package's plugin (:mod:`cxr_cad.io.jpeg_turbo`). pydicom's
``gdcm`` plugin (python-gdcm) is never chosen, even when installed: GDCM crashes the process
on corrupt JPEG data. Pillow and libjpeg-turbo give exactly dcmtk ``dcmdjpeg``'s pixels on
pydicom's grayscale JPEG test files (IJG-compatible integer IDCTs); pylibjpeg-libjpeg
differs by up to 2.

pylibjpeg-libjpeg (GPL-3.0) is not installed by default. ``pip install 'cxr_cad[gpl-decoders]'``
adds it, and pydicom's ``pylibjpeg`` plugin for JPEG and JPEG-LS (which is libjpeg) is then
tried after the permissive ones: :data:`GPL_EXTRA` names the extra in the ``DECODE_FAILED`` hint.
"""

from __future__ import annotations

import threading

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from cxr_cad.io import jpeg_turbo

#: The optional extra that installs the GPL-3.0 JPEG / JPEG-LS decoder (pylibjpeg-libjpeg).
GPL_EXTRA = "gpl-decoders"
#: Syntaxes whose ``pylibjpeg`` plugin is pylibjpeg-libjpeg (GPL-3.0); elsewhere it is -openjpeg / -rle (MIT).
GPL_PLUGIN_SYNTAXES = frozenset(
    {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless}
)

_TURBO = jpeg_turbo.LABEL
#: Permissively licensed plugins per transfer syntax, in the order they are tried.
PERMISSIVE: dict[UID, tuple[str, ...]] = {
    JPEGBaseline8Bit: ("pillow", _TURBO),
    JPEGExtended12Bit: ("pillow", _TURBO),  # more than 8 bits stored: libjpeg-turbo only, see plugin_order
    JPEGLossless: (_TURBO,),
    JPEGLosslessSV1: (_TURBO,),
    JPEGLSLossless: ("pyjpegls",),
    JPEGLSNearLossless: ("pyjpegls",),
    JPEG2000Lossless: ("pylibjpeg", "pillow"),
    JPEG2000: ("pylibjpeg", "pillow"),
    HTJ2KLossless: ("pylibjpeg",),
    HTJ2KLosslessRPCL: ("pylibjpeg",),
    HTJ2K: ("pylibjpeg",),
    RLELossless: ("pylibjpeg", "pydicom"),
}

_REGISTER_LOCK = threading.Lock()
_registered = False


class NoDecoderError(RuntimeError):
    """No decoding plugin for this transfer syntax is installed."""


class DecodeError(RuntimeError):
    """Every plugin tried failed; ``tried`` names them, the message holds each one's error."""

    def __init__(self, message: str, tried: tuple[str, ...]):
        super().__init__(message)
        self.tried = tried


def is_decoder_panic(exc: BaseException) -> bool:
    """True for a Rust panic raised through PyO3 (pylibjpeg-rle on corrupt data).

    ``pyo3_runtime.PanicException`` derives from ``BaseException``, so ``except Exception``
    misses it; it is a decoder failure on this file's data, not a reason to stop.
    """
    return type(exc).__name__ == "PanicException"


def register_plugins() -> None:
    """Add :mod:`cxr_cad.io.jpeg_turbo` to pydicom's JPEG decoders (once per process)."""
    global _registered
    with _REGISTER_LOCK:  # Decoder.add_plugin is not thread-safe
        if _registered:
            return
        for uid in jpeg_turbo.DECODER_DEPENDENCIES:
            try:
                get_decoder(uid).add_plugin(_TURBO, ("cxr_cad.io.jpeg_turbo", "decode_frame"))
            except ValueError:  # already added (a module reloaded by a test, say)
                pass
        _registered = True


def plugin_order(ts: UID, bits_stored: int = 8) -> tuple[str, ...]:
    """Plugins to try for ``ts``, permissive first, then the GPL one where the extra installs it.

    Empty for native / deflated syntaxes (no plugin) and syntaxes pydicom has no decoder for.
    """
    if ts == JPEGExtended12Bit and bits_stored > 8:
        order: tuple[str, ...] = (_TURBO,)
    else:
        order = PERMISSIVE.get(ts, ())
    if ts in GPL_PLUGIN_SYNTAXES:
        order += ("pylibjpeg",)
    return order


def usable_plugins(ts: UID, bits_stored: int = 8) -> tuple[str, ...]:
    """:func:`plugin_order` restricted to the plugins installed in this environment."""
    register_plugins()
    try:
        available = set(get_decoder(ts).available_plugins)
    except NotImplementedError:  # pydicom has no decoder for this syntax at all
        return ()
    return tuple(name for name in plugin_order(ts, bits_stored) if name in available)


def is_gpl(ts: UID, plugin: str) -> bool:
    """True when ``plugin`` decoding ``ts`` is pylibjpeg-libjpeg (GPL-3.0)."""
    return plugin == "pylibjpeg" and ts in GPL_PLUGIN_SYNTAXES


def decode_array(ds: Dataset, ts: UID) -> tuple[np.ndarray, str]:
    """Decode ``ds``'s pixel data; return (array, plugin label, "" for native / deflated data).

    Compressed data goes through the plugins of :func:`usable_plugins` in order; the first
    that succeeds wins. Other syntaxes use pydicom's own choice (``ds.pixel_array``).

    Raises:
        NoDecoderError: a compressed syntax with none of its plugins installed.
        DecodeError: every plugin failed (a Rust ``PanicException`` from pylibjpeg-rle counts).
        Exception: whatever pydicom raises for native data.
    """
    if not ts.is_compressed or ts not in PERMISSIVE:
        return ds.pixel_array, ""
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    plugins = usable_plugins(ts, bits_stored)
    if not plugins:
        raise NoDecoderError(
            f"none of the decoders for {ts.name} is installed ({', '.join(plugin_order(ts, bits_stored))})"
        )
    failures = []
    for name in plugins:
        try:
            return pixel_array(ds, decoding_plugin=name), name
        except BaseException as exc:  # noqa: BLE001 - try the next plugin; KeyboardInterrupt is re-raised
            if not isinstance(exc, Exception) and not is_decoder_panic(exc):
                raise
            last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].strip()
            failures.append(last if last.startswith(f"{name}: ") else f"{name}: {last}")
    raise DecodeError("; ".join(failures), plugins)
