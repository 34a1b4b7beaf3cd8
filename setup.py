"""Build glue for the Cython hot path; all metadata lives in pyproject.toml."""

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "memif_aio._ring",
        ["cython_ext/ring.pyx"],
        depends=["cython_ext/ring.pxd", "cython_ext/signal.pxi", "cython_ext/memif_signal.h"],
        include_dirs=[numpy.get_include(), "cython_ext"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False},
    )
)
