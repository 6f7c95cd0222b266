"""Build hook for the one C extension; everything else is declared in setup.cfg.

``cvdist.data._jpeg_region`` decodes only the rows and columns of a JPEG that a random-resized
crop keeps (cvdist/data/_jpeg_region.c). It links the system's libjpeg-turbo (Debian:
``libjpeg62-turbo-dev``, which ``make venv`` installs). It is optional: where it cannot be
built, installation goes on and cvdist decodes the whole image instead (the same pixels, slower);
the test suite checks that it was built.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cvdist.data._jpeg_region", sources=["cvdist/data/_jpeg_region.c"],
                             libraries=["jpeg"], extra_compile_args=["-O2"], optional=True)])
