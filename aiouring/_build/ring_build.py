"""Build aiouring._ring, the cffi (API mode) binding of the io_uring kernel ABI.

The declarations Python sees are in ring_cdef.h; the C that implements them is
ring_shim.c. Nothing is taken from the system's liburing or <linux/io_uring.h>.
"""
import os
import re
import sys

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(_HERE, name), encoding="utf-8") as f:
        return f.read()


def _package_version() -> str:
    text = _read(os.path.join("..", "_version.py"))
    match = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if match is None:
        raise RuntimeError("aiouring/_version.py has no __version__")
    return match.group(1)


if not sys.platform.startswith("linux"):
    raise RuntimeError(
        "aiouring runs only on Linux (it is an io_uring event loop); "
        f"this platform is {sys.platform!r}. Use uvloop or asyncio's own loop here."
    )

ffibuilder = FFI()
ffibuilder.cdef(_read("ring_cdef.h"))
ffibuilder.set_source(
    "aiouring._ring",
    _read("ring_shim.c"),
    define_macros=[("AIOU_PACKAGE_VERSION", '"%s"' % _package_version())],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-function"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
