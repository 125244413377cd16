from setuptools import setup

setup(cffi_modules=["aiouring/_build/ring_build.py:ffibuilder"])
