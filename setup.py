"""Build hook for cvdist's two C extensions; everything else is declared in setup.cfg.

``cvdist.data._jpeg_region`` decodes only the rows and columns of a JPEG that a random-resized
crop keeps (cvdist/data/_jpeg_region.c). It links the system's libjpeg-turbo (Debian:
``libjpeg62-turbo-dev``, which ``make venv`` installs). ``cvdist.data._normalise`` converts and
normalises a uint8 batch in one pass (cvdist/data/_normalise.c). Both are optional: where one
cannot be built, installation goes on and cvdist does the same work in Python / torch (the same
values, slower); the test suite checks that both were built.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("cvdist.data._jpeg_region", sources=["cvdist/data/_jpeg_region.c"], libraries=["jpeg"],
              extra_compile_args=["-O2"], optional=True),
    # -O3 vectorises the per-plane loops; no fused multiply-subtract, so each step rounds as torch's do.
    Extension("cvdist.data._normalise", sources=["cvdist/data/_normalise.c"],
              extra_compile_args=["-O3", "-ffp-contract=off"], optional=True),
])
