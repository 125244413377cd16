"""Wires the cffi build of aiouring._ring into setuptools, and turns a failed
compile into a message that says what to install (everything else is in
pyproject.toml)."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

_HOW_TO_FIX = """
aiouring could not compile its C extensions (aiouring._ring, the io_uring binding, and
aiouring._hotpath, the scheduler's callback paths):
{error}

Building aiouring from source needs a C compiler (gcc or clang; CC picks one)
and the Python development headers (Python.h) for this interpreter:
    Debian/Ubuntu:  apt-get install gcc python3-dev
    Fedora/RHEL:    dnf install gcc python3-devel
    Alpine:         apk add gcc musl-dev linux-headers python3-dev
then install again. The compiler's own output is above this message.
"""


class BuildExtExplained(build_ext):
    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:   # CompileError, DistutilsExecError, a missing compiler (OSError)
            raise CompileError(_HOW_TO_FIX.format(error=exc)) from exc


# cffi subclasses whatever build_ext is registered here to add its own step.
# aiouring._ring (cffi) is built against the stable ABI; aiouring._hotpath
# (the scheduler's callback paths) uses the full C API for speed (contexts,
# vectorcall), so a wheel is per CPython version.
setup(cmdclass={"build_ext": BuildExtExplained},
      cffi_modules=["aiouring/_build/ring_build.py:ffibuilder"],
      ext_modules=[Extension("aiouring._hotpath", sources=["aiouring/_build/hotpath.c"],
                             extra_compile_args=["-O2", "-std=gnu11", "-Wall"])])
